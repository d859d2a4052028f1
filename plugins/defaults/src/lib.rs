//! Test fixture: exports every interface with the SDK's defaults, which must decide exactly as
//! the host's built-in policy does.

struct Defaults;

impl reel_plugin::Rules for Defaults {}
impl reel_plugin::Segmentation for Defaults {}
impl reel_plugin::Naming for Defaults {}
impl reel_plugin::Callbacks for Defaults {}
impl reel_plugin::Setup for Defaults {}

reel_plugin::export!(Defaults: rules, segmentation, naming, callbacks, setup);
