//! The plugin contract in every version the gateway speaks: the current one
//! (`wit/plugin.wit`), 0.3.0 and 0.2.0 (`wit/legacy/`), so plugins built before a contract
//! change keep loading. The rest of the host sees one filter and one sink, in the SDK's types; the
//! version is settled here, once, when a component is linked.
//!
//! 0.4.0 added `interest.prescreen`: a 0.3.0 filter has none, so it sees every frame of its
//! interest. 0.3.0 added content kinds and `interest.stateless`. A 0.2.0 filter's interest
//! cannot name the new kinds, so the host never calls it with one, and it counts as keeping
//! state.

use wasmtime::Store;
use wasmtime::component::{HasSelf, InstancePre, Linker};

use sluice_core::frame::{
    Action, Content, ContentKind, Direction, Event, Frame, Interest, SessionInfo, SinkError,
    Verdict,
};

use crate::HostState;

/// The version plugins are built against today.
pub const CURRENT: &str = "0.4.0";
/// Every version the gateway loads, newest first.
pub const VERSIONS: [&str; 3] = [CURRENT, "0.3.0", "0.2.0"];

/// One version's bindings: its filter and sink worlds over one set of types, and `log`.
macro_rules! bindings {
    ($path:tt) => {
        pub mod filter {
            wasmtime::component::bindgen!({ path: $path, world: "filter" });
        }
        pub mod sink {
            wasmtime::component::bindgen!({
                path: $path,
                world: "sink",
                with: {
                    "sluice:plugin/types": super::filter::sluice::plugin::types,
                    "sluice:plugin/log": super::filter::sluice::plugin::log,
                },
            });
        }
        pub use filter::sluice::plugin::{log, types as wit};

        impl log::Host for crate::HostState {
            fn log(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) {
                let level = match level {
                    log::Level::Trace => tracing::Level::TRACE,
                    log::Level::Debug => tracing::Level::DEBUG,
                    log::Level::Info => tracing::Level::INFO,
                    log::Level::Warn => tracing::Level::WARN,
                    log::Level::Error => tracing::Level::ERROR,
                };
                self.log(level, message, fields);
            }
        }
    };
}

mod current {
    bindings!("../../wit");
    mod conversions {
        use super::filter::sluice::plugin::types as wit;
        sluice_plugin_sdk::__impl_contract_conversions!();
    }
}

mod v0_3 {
    bindings!("../../wit/legacy/0.3.0");

    mod conversions {
        use super::filter::sluice::plugin::types as wit;
        sluice_plugin_sdk::__impl_contract_conversions!(@since_0_3);
    }

    /// A 0.3.0 interest: no prescreen.
    pub fn interest(i: wit::Interest) -> super::Interest {
        super::Interest {
            client_to_target: i.client_to_target.into_iter().map(Into::into).collect(),
            target_to_client: i.target_to_client.into_iter().map(Into::into).collect(),
            stateless: i.stateless,
            prescreen: None,
        }
    }
}

mod v0_2 {
    bindings!("../../wit/legacy/0.2.0");

    mod conversions {
        use super::filter::sluice::plugin::types as wit;
        sluice_plugin_sdk::__impl_contract_conversions!(@shared);
    }

    use super::{Action, Content, ContentKind, Frame, Interest, Verdict};

    /// A 0.2.0 content is one of the current kinds.
    pub fn content(c: wit::Content) -> Content {
        match c {
            wit::Content::Bytes(b) => Content::Bytes(b),
            wit::Content::Line(l) => Content::Line(l),
            wit::Content::Statement(s) => Content::Statement(s.into()),
            wit::Content::Columns(c) => Content::Columns(c.into_iter().map(Into::into).collect()),
            wit::Content::Row(r) => Content::Row(r),
        }
    }

    /// The 0.2.0 form of a frame, when its content has one.
    pub fn frame(frame: &Frame) -> Option<wit::Frame> {
        let content = match frame.content.clone() {
            Content::Bytes(b) => wit::Content::Bytes(b),
            Content::Line(l) => wit::Content::Line(l),
            Content::Statement(s) => wit::Content::Statement(s.into()),
            Content::Columns(c) => wit::Content::Columns(c.into_iter().map(Into::into).collect()),
            Content::Row(r) => wit::Content::Row(r),
            Content::File(_)
            | Content::ToolCall(_)
            | Content::ToolResult(_)
            | Content::HttpRequest(_)
            | Content::HttpResponse(_) => return None,
        };
        Some(wit::Frame {
            seq: frame.seq,
            direction: frame.direction.into(),
            timestamp_ms: frame.timestamp_ms,
            content,
        })
    }

    pub fn interest(i: wit::Interest) -> Interest {
        let kind = |k: wit::ContentKind| match k {
            wit::ContentKind::Bytes => ContentKind::Bytes,
            wit::ContentKind::Line => ContentKind::Line,
            wit::ContentKind::Statement => ContentKind::Statement,
            wit::ContentKind::Columns => ContentKind::Columns,
            wit::ContentKind::Row => ContentKind::Row,
        };
        Interest {
            client_to_target: i.client_to_target.into_iter().map(kind).collect(),
            target_to_client: i.target_to_client.into_iter().map(kind).collect(),
            stateless: false,
            prescreen: None,
        }
    }

    pub fn verdict(v: wit::Verdict) -> Verdict {
        let action = match v.action {
            wit::Action::Pass => Action::Pass,
            wit::Action::Replace(c) => Action::Replace(content(c)),
            wit::Action::Hold(r) => Action::Hold(r),
            wit::Action::Deny(r) => Action::Deny(r),
        };
        Verdict {
            action,
            record_as: v.record_as.map(content),
        }
    }
}

/// `log` in every version, for filters and sinks alike.
pub fn add_log_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    current::log::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    v0_3::log::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    v0_2::log::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
}

/// A filter component linked in its contract version.
pub enum FilterPre {
    Current(current::filter::FilterPre<HostState>),
    V0_3(v0_3::filter::FilterPre<HostState>),
    V0_2(v0_2::filter::FilterPre<HostState>),
}

/// A filter instance's exports.
pub enum Filter {
    Current(current::filter::Filter),
    V0_3(v0_3::filter::Filter),
    V0_2(v0_2::filter::Filter),
}

impl FilterPre {
    pub fn new(version: &str, pre: InstancePre<HostState>) -> wasmtime::Result<FilterPre> {
        Ok(match version {
            "0.3.0" => FilterPre::V0_3(v0_3::filter::FilterPre::new(pre)?),
            "0.2.0" => FilterPre::V0_2(v0_2::filter::FilterPre::new(pre)?),
            _ => FilterPre::Current(current::filter::FilterPre::new(pre)?),
        })
    }

    pub fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Filter> {
        Ok(match self {
            FilterPre::Current(pre) => Filter::Current(pre.instantiate(store)?),
            FilterPre::V0_3(pre) => Filter::V0_3(pre.instantiate(store)?),
            FilterPre::V0_2(pre) => Filter::V0_2(pre.instantiate(store)?),
        })
    }
}

impl Filter {
    pub fn init(
        &self,
        store: &mut Store<HostState>,
        config: &str,
        session: &SessionInfo,
    ) -> wasmtime::Result<Result<Interest, String>> {
        Ok(match self {
            Filter::Current(f) => f
                .call_init(store, config, &session.clone().into())?
                .map(Into::into),
            Filter::V0_3(f) => f
                .call_init(store, config, &session.clone().into())?
                .map(v0_3::interest),
            Filter::V0_2(f) => f
                .call_init(store, config, &session.clone().into())?
                .map(v0_2::interest),
        })
    }

    pub fn on_frame(
        &self,
        store: &mut Store<HostState>,
        frame: &Frame,
    ) -> wasmtime::Result<Verdict> {
        Ok(match self {
            Filter::Current(f) => f.call_on_frame(store, &frame.clone().into())?.into(),
            Filter::V0_3(f) => f.call_on_frame(store, &frame.clone().into())?.into(),
            Filter::V0_2(f) => match v0_2::frame(frame) {
                Some(old) => v0_2::verdict(f.call_on_frame(store, &old)?),
                // Unreachable through the chain (a 0.2.0 interest names no newer kind); as
                // if asked and passed, like any frame outside a plugin's interest.
                None => Verdict::pass(),
            },
        })
    }

    pub fn flush(
        &self,
        store: &mut Store<HostState>,
        direction: Direction,
    ) -> wasmtime::Result<Option<Content>> {
        Ok(match self {
            Filter::Current(f) => f.call_flush(store, direction.into())?.map(Into::into),
            Filter::V0_3(f) => f.call_flush(store, direction.into())?.map(Into::into),
            Filter::V0_2(f) => f.call_flush(store, direction.into())?.map(v0_2::content),
        })
    }
}

/// A sink component linked in its contract version.
pub enum SinkPre {
    Current(current::sink::SinkPre<HostState>),
    V0_3(v0_3::sink::SinkPre<HostState>),
    V0_2(v0_2::sink::SinkPre<HostState>),
}

pub enum Sink {
    Current(current::sink::Sink),
    V0_3(v0_3::sink::Sink),
    V0_2(v0_2::sink::Sink),
}

impl SinkPre {
    pub fn new(version: &str, pre: InstancePre<HostState>) -> wasmtime::Result<SinkPre> {
        Ok(match version {
            "0.3.0" => SinkPre::V0_3(v0_3::sink::SinkPre::new(pre)?),
            "0.2.0" => SinkPre::V0_2(v0_2::sink::SinkPre::new(pre)?),
            _ => SinkPre::Current(current::sink::SinkPre::new(pre)?),
        })
    }

    pub fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Sink> {
        Ok(match self {
            SinkPre::Current(pre) => Sink::Current(pre.instantiate(store)?),
            SinkPre::V0_3(pre) => Sink::V0_3(pre.instantiate(store)?),
            SinkPre::V0_2(pre) => Sink::V0_2(pre.instantiate(store)?),
        })
    }
}

impl Sink {
    pub fn init(
        &self,
        store: &mut Store<HostState>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Sink::Current(s) => s.call_init(store, config),
            Sink::V0_3(s) => s.call_init(store, config),
            Sink::V0_2(s) => s.call_init(store, config),
        }
    }

    pub fn deliver(
        &self,
        store: &mut Store<HostState>,
        batch: &[Event],
    ) -> wasmtime::Result<Result<(), SinkError>> {
        Ok(match self {
            Sink::Current(s) => {
                let batch: Vec<current::wit::Event> =
                    batch.iter().cloned().map(Into::into).collect();
                s.call_deliver(store, &batch)?.map_err(Into::into)
            }
            Sink::V0_3(s) => {
                let batch: Vec<v0_3::wit::Event> = batch.iter().cloned().map(Into::into).collect();
                s.call_deliver(store, &batch)?.map_err(Into::into)
            }
            Sink::V0_2(s) => {
                let batch: Vec<v0_2::wit::Event> = batch.iter().cloned().map(Into::into).collect();
                s.call_deliver(store, &batch)?.map_err(Into::into)
            }
        })
    }
}
