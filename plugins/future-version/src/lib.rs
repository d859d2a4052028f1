//! Test fixture: a plugin built against a `reel:policy` version this host does not know.

wit_bindgen::generate!({
    inline: "
        package reel:policy@0.2.0;
        interface naming { name-file: func(key: string) -> result<string, string>; }
        world later { export naming; }
    ",
});

struct Future;

impl exports::reel::policy::naming::Guest for Future {
    fn name_file(key: String) -> Result<String, String> {
        Ok(key)
    }
}

export!(Future);
