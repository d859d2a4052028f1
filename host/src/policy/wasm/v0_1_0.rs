//! Adapter for plugins built against `reel:policy@0.1.0`: bindings generated from its WIT,
//! and conversions between them and the host's domain types. One such module per supported
//! WIT version; generated types never leave it.

use wasmtime::component::{Instance, InstancePre};
use wasmtime::Store;

use super::{Call, CallEnv, CallState, LoadError};
use crate::policy::{CallbackRequest, Candidate, ConfigValue, Failure, FileInfo, Format, Interface, Plan, StreamInfo};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "reel:policy/policy@0.1.0",
});

use self::exports::reel::policy::{admission, callbacks, naming, rules, segmentation, setup};
use self::reel::policy::types as t;

/// The export indices of one plugin, looked up once at load, and its configuration.
pub(super) struct Adapter {
    admission: Option<admission::GuestIndices>,
    rules: Option<rules::GuestIndices>,
    segmentation: Option<segmentation::GuestIndices>,
    naming: Option<naming::GuestIndices>,
    callbacks: Option<callbacks::GuestIndices>,
    setup: Option<setup::GuestIndices>,
    config: Vec<(String, t::Value)>,
}

impl Adapter {
    pub fn new(
        pre: &InstancePre<CallState>,
        exports: &[Interface],
        config: &[(String, ConfigValue)],
    ) -> Result<Adapter, LoadError> {
        fn indices<I>(
            exports: &[Interface],
            interface: Interface,
            new: impl FnOnce() -> wasmtime::Result<I>,
        ) -> Result<Option<I>, LoadError> {
            if !exports.contains(&interface) {
                return Ok(None);
            }
            new().map(Some).map_err(|source| LoadError::WrongShape { interface, source })
        }
        Ok(Adapter {
            admission: indices(exports, Interface::Admission, || admission::GuestIndices::new(pre))?,
            rules: indices(exports, Interface::Rules, || rules::GuestIndices::new(pre))?,
            segmentation: indices(exports, Interface::Segmentation, || segmentation::GuestIndices::new(pre))?,
            naming: indices(exports, Interface::Naming, || naming::GuestIndices::new(pre))?,
            callbacks: indices(exports, Interface::Callbacks, || callbacks::GuestIndices::new(pre))?,
            setup: indices(exports, Interface::Setup, || setup::GuestIndices::new(pre))?,
            config: config.iter().map(|(k, v)| (k.clone(), value(v))).collect(),
        })
    }

    /// Loads every exported interface, which checks each function's type.
    pub fn typecheck(&self, store: &mut Store<CallState>, instance: &Instance) -> Result<(), LoadError> {
        let shape = |interface: Interface| {
            move |source: wasmtime::Error| LoadError::TypeMismatch { interface, version: "0.1.0", source }
        };
        if let Some(idx) = &self.admission {
            idx.load(&mut *store, instance).map_err(shape(Interface::Admission))?;
        }
        if let Some(idx) = &self.rules {
            idx.load(&mut *store, instance).map_err(shape(Interface::Rules))?;
        }
        if let Some(idx) = &self.segmentation {
            idx.load(&mut *store, instance).map_err(shape(Interface::Segmentation))?;
        }
        if let Some(idx) = &self.naming {
            idx.load(&mut *store, instance).map_err(shape(Interface::Naming))?;
        }
        if let Some(idx) = &self.callbacks {
            idx.load(&mut *store, instance).map_err(shape(Interface::Callbacks))?;
        }
        if let Some(idx) = &self.setup {
            idx.load(&mut *store, instance).map_err(shape(Interface::Setup))?;
        }
        Ok(())
    }

    fn context(&self, env: CallEnv) -> t::Context {
        t::Context { now_ms: env.now_ms, nonce: env.nonce, config: self.config.clone() }
    }

    pub fn validate(&self, call: &Call<'_>) -> Result<(), Failure> {
        let idx = self.setup.as_ref().ok_or_else(|| not_exported(Interface::Setup))?;
        call.run(|store, instance| idx.load(&mut *store, instance)?.call_validate(&mut *store, &self.config))
    }

    /// `Ok(Err(reason))`: the plugin refuses the publish.
    pub fn admit(&self, call: &Call<'_>, env: CallEnv, s: &StreamInfo) -> Result<Result<(), String>, Failure> {
        let idx = self.admission.as_ref().ok_or_else(|| not_exported(Interface::Admission))?;
        let (ctx, s) = (self.context(env), stream(s));
        let v = call.run(|store, instance| idx.load(&mut *store, instance)?.call_admit(&mut *store, &ctx, &s))?;
        Ok(match v {
            admission::Verdict::Admit => Ok(()),
            admission::Verdict::Refuse(reason) => Err(reason),
        })
    }

    pub fn select(
        &self,
        call: &Call<'_>,
        env: CallEnv,
        s: &StreamInfo,
        c: &[Candidate],
    ) -> Result<Option<String>, Failure> {
        let idx = self.rules.as_ref().ok_or_else(|| not_exported(Interface::Rules))?;
        let (ctx, s) = (self.context(env), stream(s));
        let c: Vec<rules::Candidate> = c
            .iter()
            .map(|c| rules::Candidate {
                rule_id: c.rule_id.clone(),
                domain: c.domain.clone(),
                app: c.app.clone(),
                name: c.name.clone(),
                template: c.template.clone(),
                priority: c.priority,
            })
            .collect();
        call.run(|store, instance| idx.load(&mut *store, instance)?.call_select(&mut *store, &ctx, &s, &c))
    }

    pub fn plan(
        &self,
        call: &Call<'_>,
        env: CallEnv,
        s: &StreamInfo,
        c: Format,
        default: Plan,
    ) -> Result<Plan, Failure> {
        let idx = self.segmentation.as_ref().ok_or_else(|| not_exported(Interface::Segmentation))?;
        let (ctx, s) = (self.context(env), stream(s));
        let d = segmentation::Plan {
            interval_ms: default.interval_ms,
            hls_segment_ms: default.hls_segment_ms,
            resume_window_ms: default.resume_window_ms,
        };
        let p = call.run(|store, instance| {
            idx.load(&mut *store, instance)?.call_plan_for(&mut *store, &ctx, &s, container(c), d)
        })?;
        Ok(Plan { interval_ms: p.interval_ms, hls_segment_ms: p.hls_segment_ms, resume_window_ms: p.resume_window_ms })
    }

    pub fn name_file(&self, call: &Call<'_>, env: CallEnv, s: &StreamInfo, f: &FileInfo) -> Result<String, Failure> {
        let idx = self.naming.as_ref().ok_or_else(|| not_exported(Interface::Naming))?;
        let (ctx, s, f) = (self.context(env), stream(s), file(f));
        call.run(|store, instance| idx.load(&mut *store, instance)?.call_name_file(&mut *store, &ctx, &s, &f))
    }

    pub fn warm_naming(
        &self,
        call: &Call<'_>,
        env: CallEnv,
        s: &StreamInfo,
        f: &FileInfo,
        n: u32,
    ) -> Result<std::time::Duration, Failure> {
        let idx = self.naming.as_ref().ok_or_else(|| not_exported(Interface::Naming))?;
        let (ctx, s, f) = (self.context(env), stream(s), file(f));
        call.run(|store, instance| {
            let guest = idx.load(&mut *store, instance)?;
            let started = std::time::Instant::now();
            for _ in 0..n {
                if let Err(e) = guest.call_name_file(&mut *store, &ctx, &s, &f)? {
                    return Ok(Err(e));
                }
            }
            Ok(Ok(started.elapsed()))
        })
    }

    pub fn on_file(
        &self,
        call: &Call<'_>,
        env: CallEnv,
        s: &StreamInfo,
        f: &FileInfo,
        url: &str,
    ) -> Result<Option<CallbackRequest>, Failure> {
        let idx = self.callbacks.as_ref().ok_or_else(|| not_exported(Interface::Callbacks))?;
        let (ctx, s, f) = (self.context(env), stream(s), file(f));
        let r =
            call.run(|store, instance| idx.load(&mut *store, instance)?.call_on_file(&mut *store, &ctx, &s, &f, url))?;
        Ok(r.map(|r| CallbackRequest { url: r.url, headers: r.headers, body: r.body }))
    }
}

fn not_exported(i: Interface) -> Failure {
    Failure::new(crate::policy::FailureReason::Error, format!("does not export `{i}`"))
}

fn value(v: &ConfigValue) -> t::Value {
    match v {
        ConfigValue::Text(s) => t::Value::Text(s.clone()),
        ConfigValue::Integer(n) => t::Value::Integer(*n),
        ConfigValue::Float(x) => t::Value::Float(*x),
        ConfigValue::Boolean(b) => t::Value::Boolean(*b),
        ConfigValue::Json(s) => t::Value::Json(s.clone()),
    }
}

fn container(c: Format) -> t::Container {
    match c {
        Format::Flv => t::Container::Flv,
        Format::Hls => t::Container::Hls,
        Format::Mp4 => t::Container::Mp4,
        Format::Aac => t::Container::Aac,
    }
}

fn stream(s: &StreamInfo) -> t::StreamInfo {
    t::StreamInfo {
        domain: s.domain.clone(),
        app: s.app.clone(),
        name: s.name.clone(),
        params: s.params.clone(),
        video_codec: s.video_codec.clone(),
        audio_codec: s.audio_codec.clone(),
        started_at_ms: s.started_at_ms,
    }
}

fn file(f: &FileInfo) -> t::FileInfo {
    t::FileInfo {
        container: container(f.container),
        sequence: f.sequence,
        start_ms: f.start_ms,
        end_ms: f.end_ms,
        size: f.size,
        duration_ms: f.duration_ms,
        key: f.key.clone(),
        session_id: f.session_id.clone(),
        task_id: f.task_id.clone(),
        random_id: f.random_id.clone(),
    }
}
