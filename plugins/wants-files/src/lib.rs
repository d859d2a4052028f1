//! Test fixture: reads a file, so its component imports `wasi:filesystem`, which Reel refuses.

use reel_plugin::{Context, FileInfo, StreamInfo};

struct WantsFiles;

impl reel_plugin::Naming for WantsFiles {
    fn name_file(_: &Context, _: &StreamInfo, _: &FileInfo) -> Result<String, String> {
        std::fs::read_to_string("/etc/hostname").map_err(|e| e.to_string())
    }
}

reel_plugin::export!(WantsFiles: naming);
