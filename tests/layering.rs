//! The host's layering, checked from its sources: data flows one way (see the design's table of
//! rooms), so no two modules of `host/src/`, and no two files of one folder, import each other,
//! and each room imports only the rooms it may.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// What each room may import (`main.rs` may import everything).
const MAY_IMPORT: &[(&str, &[&str])] = &[
    ("media", &[]),
    ("config", &[]),
    ("ingest", &["media", "config"]),
    ("mux", &["media"]),
    ("policy", &["media", "config"]),
    ("storage", &["config"]),
    ("catalog", &["config"]),
    ("record", &["media", "mux", "policy", "storage", "catalog", "config"]),
    ("tasks", &["record", "ingest", "catalog", "config"]),
    ("notify", &["catalog", "policy", "config"]),
    ("api", &["record", "tasks", "catalog", "notify", "config"]),
];

/// Imports the table does not allow yet, each with the change that removes it.
const KNOWN_EXCEPTIONS: &[(&str, &str, &str)] = &[];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The source without comments and string literals (so prose naming a module is no import).
fn code(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\'', '"') or a lifetime ('a).
            if b.get(i + 1) == Some(&b'\\') {
                i += 2;
                while i < b.len() && b[i] != b'\'' {
                    i += 1;
                }
                i += 1;
            } else if b.get(i + 2) == Some(&b'\'') {
                i += 3;
            } else {
                out.push('\'');
                i += 1;
            }
        } else if b[i] == b'r' && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) && {
            let h = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            b.get(i + 1 + h) == Some(&b'"')
        } {
            // A raw string r#"…"#: ends at a quote followed by as many hashes.
            let h = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', h)).collect();
            i += 2 + h;
            while i < b.len() && !b[i..].starts_with(&close) {
                i += 1;
            }
            i += close.len();
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Path segments following each occurrence of `prefix` (`crate::a::b` → `["a", "b"]`),
/// including those inside `use crate::{a, b::c}` groups (their first segments).
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for (at, _) in code.match_indices(prefix) {
        if at > 0 && code[..at].chars().next_back().is_some_and(|c| ident(c) || c == ':') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::x, b}`: the first segment of each member (one level of nesting).
            let mut depth = 0;
            let mut member = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push(segments(&member));
                        member.clear();
                        continue;
                    }
                    _ => {}
                }
                member.push(c);
            }
            found.push(segments(&member));
        } else {
            found.push(segments(rest));
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

fn segments(s: &str) -> Vec<String> {
    let s = s.trim_start();
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        out.push(rest[..end].to_string());
        match rest[end..].strip_prefix("::") {
            Some(r) if r.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') => rest = r,
            _ => break,
        }
    }
    out
}

/// A host source file: its folder (relative to `src/`, `""` for the crate root) and its name.
struct File {
    folder: Vec<String>,
    /// File stem; `mod` for a folder's root.
    name: String,
    code: String,
}

fn load() -> Vec<File> {
    let mut paths = Vec::new();
    rust_files(Path::new(SRC), &mut paths);
    paths
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(SRC).unwrap();
            let mut folder: Vec<String> =
                rel.parent().unwrap().components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            let mut name = rel.file_stem().unwrap().to_string_lossy().into_owned();
            if name == "mod" {
                // `a/b/mod.rs` is module `a::b`: its siblings are the other files of `a/b/`.
                name = "mod".into();
            } else if folder.is_empty() && name != "lib" && name != "main" {
                // `src/x.rs` is a room of its own.
                folder = vec![];
            }
            let code = code(&std::fs::read_to_string(&p).unwrap());
            File { folder, name, code }
        })
        .collect()
}

fn room(f: &File) -> Option<&str> {
    match (f.folder.first(), f.name.as_str()) {
        (Some(r), _) => Some(r),
        (None, "lib" | "main") => None,
        (None, n) => Some(n),
    }
}

/// Finds a cycle in `edges`, as the path that closes it.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges.keys().find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

/// Room-level imports: `room -> {rooms it names through crate::}`.
fn room_edges(files: &[File]) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let Some(from) = room(f) else { continue };
        for p in paths_after(&f.code, "crate::") {
            if p[0] != from {
                edges.entry(from.to_string()).or_default().insert(p[0].clone());
            }
        }
    }
    edges
}

/// File-level imports inside each folder: `folder/file -> folder/sibling`, by `super::sibling`,
/// `crate::folder::sibling` or (from a folder's root) `self::sibling`/`sibling::`.
fn sibling_edges(files: &[File]) -> BTreeMap<String, BTreeSet<String>> {
    let mut siblings: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        if f.name != "mod" {
            siblings.entry(f.folder.clone()).or_default().insert(f.name.clone());
        }
        // Sub-folders are siblings too (`mux/mp4/` beside `mux/ts.rs`).
        if f.folder.len() > 1 && f.name == "mod" {
            let (last, parent) = f.folder.split_last().unwrap();
            siblings.entry(parent.to_vec()).or_default().insert(last.clone());
        }
    }
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files.iter().filter(|f| f.name != "mod" && !f.folder.is_empty()) {
        let sib = &siblings[&f.folder];
        let key = |n: &str| format!("{}/{n}", f.folder.join("/"));
        let mut targets = BTreeSet::new();
        for p in paths_after(&f.code, "super::") {
            targets.insert(p[0].clone());
        }
        for p in paths_after(&f.code, "crate::") {
            if p.len() > f.folder.len() && p[..f.folder.len()] == f.folder[..] {
                targets.insert(p[f.folder.len()].clone());
            }
        }
        for t in targets {
            if t != f.name && sib.contains(&t) {
                edges.entry(key(&f.name)).or_default().insert(key(&t));
            }
        }
    }
    edges
}

#[test]
fn no_two_host_modules_import_each_other() {
    let files = load();
    assert!(files.len() > 20, "read the host's sources from {SRC}");
    let edges = room_edges(&files);
    assert!(edges.get("record").is_some_and(|e| e.contains("mux")), "the check sees record -> mux: {edges:?}");
    if let Some(c) = cycle(&edges) {
        panic!("host modules import each other: {}", c.join(" -> "));
    }
}

#[test]
fn no_two_files_of_one_folder_import_each_other() {
    let files = load();
    let edges = sibling_edges(&files);
    assert!(
        edges.get("record/stream").is_some_and(|e| e.contains("record/output")),
        "the check sees record/stream -> record/output: {edges:?}"
    );
    if let Some(c) = cycle(&edges) {
        panic!("files of one folder import each other: {}", c.join(" -> "));
    }
}

#[test]
fn each_room_imports_only_what_the_design_allows() {
    let files = load();
    let allowed: BTreeMap<&str, &[&str]> = MAY_IMPORT.iter().copied().collect();
    let mut wrong = Vec::new();
    for (from, tos) in room_edges(&files) {
        let Some(ok) = allowed.get(from.as_str()) else {
            wrong.push(format!("{from} is not a room of the design (add it to the table in the design and here)"));
            continue;
        };
        for to in tos {
            let excepted = KNOWN_EXCEPTIONS.iter().any(|(f, t, _)| *f == from && *t == to);
            if !ok.contains(&to.as_str()) && !excepted {
                wrong.push(format!("{from} imports {to}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the design's table:\n  {}", wrong.join("\n  "));
}

#[test]
fn the_checker_reads_paths_as_rust_does() {
    let c = code(concat!(
        "use crate::{media::Frame, mux::{a, b}}; // crate::api\n",
        "let s = \"crate::tasks\"; let r = r#\"crate::\"api\"#; let q = '\"'; let l: &'a str;\n",
        "/* crate::api /* nested */ crate::api */ super::output::x();"
    ));
    let mut p: Vec<String> = paths_after(&c, "crate::").into_iter().map(|s| s[0].clone()).collect();
    p.sort();
    assert_eq!(p, ["media", "mux"]);
    assert_eq!(paths_after(&c, "super::"), [vec!["output".to_string(), "x".to_string()]]);
    let mut e = BTreeMap::new();
    e.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    e.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(cycle(&e), Some(vec!["a".to_string(), "b".to_string(), "a".to_string()]));
}
