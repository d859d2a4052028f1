//! Test fixture: claims `reel:policy@0.1.0` but exports `naming` with another signature.

wit_bindgen::generate!({
    inline: "
        package reel:policy@0.1.0;
        interface naming { name-file: func(key: string) -> result<string, string>; }
        world wrong { export naming; }
    ",
});

struct Wrong;

impl exports::reel::policy::naming::Guest for Wrong {
    fn name_file(key: String) -> Result<String, String> {
        Ok(key)
    }
}

export!(Wrong);
