//! Policy decisions: which rule records a stream, how files are segmented and named, and what
//! the customer's server is told. The built-in policy lives here; plugins implement the same
//! trait.

use crate::media::time::escaped;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Container {
    Flv,
    Hls,
    Mp4,
    Aac,
}

impl Container {
    pub fn extension(self) -> &'static str {
        match self {
            Container::Flv => "flv",
            Container::Hls => "m3u8",
            Container::Mp4 => "mp4",
            Container::Aac => "aac",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct StreamInfo {
    pub domain: String,
    pub app: String,
    pub name: String,
    pub params: Vec<(String, String)>,
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    pub started_at_ms: u64,
}

#[derive(Clone, Debug)]
pub struct FileInfo {
    pub container: Container,
    pub sequence: u32,
    pub start_ms: u64,
    pub end_ms: u64,
    pub size: u64,
    pub duration_ms: u64,
    pub key: String,
    pub session_id: String,
    pub task_id: Option<String>,
    pub random_id: String,
}

#[derive(Clone, Debug)]
pub struct Candidate {
    pub rule_id: String,
    pub domain: String,
    pub app: String,
    pub name: String,
    pub template: String,
    pub priority: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub interval_ms: u64,
    pub hls_segment_ms: u32,
    pub resume_window_ms: u32,
}

#[derive(Clone, Debug)]
pub struct CallbackRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub trait Policy: Send + Sync {
    fn select_rule(&self, s: &StreamInfo, c: &[Candidate]) -> Option<String>;
    fn plan(&self, s: &StreamInfo, c: Container, default: Plan) -> Plan;
    fn name_file(&self, s: &StreamInfo, f: &FileInfo) -> String;
    fn on_file(&self, s: &StreamInfo, f: &FileInfo, callback_url: &str) -> Option<CallbackRequest>;
}

/// Today's defaults.
pub struct Builtin;

fn specificity(c: &Candidate) -> u8 {
    u8::from(c.name != "*") * 4 + u8::from(c.app != "*") * 2 + u8::from(c.domain != "*")
}

impl Policy for Builtin {
    fn select_rule(&self, _s: &StreamInfo, c: &[Candidate]) -> Option<String> {
        // Most specific first (stream > app > domain), then priority, then config order.
        let mut best: Option<&Candidate> = None;
        for cand in c {
            let better = match best {
                None => true,
                Some(b) => (specificity(cand), cand.priority) > (specificity(b), b.priority),
            };
            if better {
                best = Some(cand);
            }
        }
        best.map(|b| b.rule_id.clone())
    }

    fn plan(&self, _s: &StreamInfo, _c: Container, default: Plan) -> Plan {
        default
    }

    fn name_file(&self, s: &StreamInfo, f: &FileInfo) -> String {
        format!(
            "{}/{}/{}_{}.{}",
            sanitize(&s.app),
            sanitize(&s.name),
            escaped(f.start_ms),
            escaped(f.end_ms),
            f.container.extension()
        )
    }

    fn on_file(&self, _s: &StreamInfo, _f: &FileInfo, _url: &str) -> Option<CallbackRequest> {
        None
    }
}

/// Makes a name safe as one path component.
pub fn sanitize(s: &str) -> String {
    let v: String = s.chars().map(|c| if c.is_alphanumeric() || "-_.@".contains(c) { c } else { '_' }).collect();
    if v.is_empty() || v.chars().all(|c| c == '.') {
        "_".into()
    } else {
        v
    }
}
