//! Write Sluice plugins in plain Rust.
//!
//! A filter plugin is a type that implements [`Filter`], exported with [`export_filter!`]:
//!
//! ```
//! use sluice_plugin_sdk::{Config, Content, Filter, Frame, SessionInfo, Verdict};
//!
//! struct Shout;
//!
//! impl Filter for Shout {
//!     fn init(_config: &Config, _session: &SessionInfo) -> Result<Self, String> {
//!         Ok(Shout)
//!     }
//!     fn on_frame(&mut self, frame: &Frame) -> Verdict {
//!         match &frame.content {
//!             Content::Line(line) => Verdict::replace(Content::Line(line.to_uppercase())),
//!             _ => Verdict::pass(),
//!         }
//!     }
//! }
//!
//! sluice_plugin_sdk::export_filter!(Shout);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`: the result is a component
//! the gateway loads. Natively (`cargo test`) the macro exports nothing, so the same logic is
//! unit-tested as ordinary Rust, without Wasm; [`testing::FilterHarness`] helps with that.

mod conversions;
mod pattern;
#[cfg(feature = "prescreen")]
pub mod prescreen;
mod sessions;
mod types;

pub use pattern::pattern_error;
pub use sessions::SessionKind;
pub use types::*;

pub mod http;
pub mod log;
pub mod testing;

/// The glue between the generated bindings and the traits; not part of the API.
#[doc(hidden)]
#[cfg(target_arch = "wasm32")]
pub mod __wasm;

/// A plugin that sees every frame of one session and returns a verdict for each.
///
/// The gateway makes one instance per session, so fields of `Self` are per-session state.
pub trait Filter: Sized {
    /// Called once per session, before any frame. Do expensive setup here (compile
    /// patterns), not per frame. An error refuses the session with this message.
    fn init(config: &Config, session: &SessionInfo) -> Result<Self, String>;

    /// The frames this instance wants to see, asked once after `init`. The gateway passes
    /// every other frame on without calling [`Filter::on_frame`], as if it said `pass`; a
    /// plugin that judges only some frames says so here and costs nothing on the rest.
    fn interest(&self) -> Interest {
        Interest::all()
    }

    /// Decide what happens to one frame.
    fn on_frame(&mut self, frame: &Frame) -> Verdict;

    /// Return what the plugin still buffers for `direction`, if anything. The gateway calls
    /// this on an idle timer and at the end of each stream, so buffering is always bounded.
    fn flush(&mut self, _direction: Direction) -> Option<Content> {
        None
    }
}

/// A plugin that delivers batches of recorded events to a backend.
pub trait Sink: Sized {
    fn init(config: &Config) -> Result<Self, String>;

    /// Deliver one batch, in order. A [`SinkError::Retryable`] makes the gateway try the same
    /// batch again later; nothing is skipped.
    fn deliver(&mut self, batch: Vec<Event>) -> Result<(), SinkError>;
}

/// Export a [`Filter`] implementation as the component's `filter` world.
#[macro_export]
macro_rules! export_filter {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            ::std::thread_local! {
                static STATE: ::std::cell::RefCell<::core::option::Option<$ty>> =
                    const { ::std::cell::RefCell::new(::core::option::Option::None) };
            }
            struct Export;
            impl $crate::__wasm::filter::Guest for Export {
                fn init(
                    config: ::std::string::String,
                    session: $crate::__wasm::filter::SessionInfo,
                ) -> ::core::result::Result<
                    $crate::__wasm::filter::sluice::plugin::types::Interest,
                    ::std::string::String,
                > {
                    STATE.with(|state| $crate::__wasm::filter_init(state, config, session))
                }
                fn on_frame(
                    frame: $crate::__wasm::filter::Frame,
                ) -> $crate::__wasm::filter::Verdict {
                    STATE.with(|state| $crate::__wasm::filter_on_frame(state, frame))
                }
                fn flush(
                    direction: $crate::__wasm::filter::Direction,
                ) -> ::core::option::Option<$crate::__wasm::filter::Content> {
                    STATE.with(|state| $crate::__wasm::filter_flush(state, direction))
                }
            }
            $crate::__wasm::filter::__export_filter_world!(Export with_types_in $crate::__wasm::filter);
        };
        // Natively there is nothing to export; still check the type at compile time.
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn() = || $crate::__assert_filter::<$ty>();
    };
}

/// Export a [`Sink`] implementation as the component's `sink` world.
#[macro_export]
macro_rules! export_sink {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            ::std::thread_local! {
                static STATE: ::std::cell::RefCell<::core::option::Option<$ty>> =
                    const { ::std::cell::RefCell::new(::core::option::Option::None) };
            }
            struct Export;
            impl $crate::__wasm::sink::Guest for Export {
                fn init(
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    STATE.with(|state| $crate::__wasm::sink_init(state, config))
                }
                fn deliver(
                    batch: ::std::vec::Vec<$crate::__wasm::sink::Event>,
                ) -> ::core::result::Result<(), $crate::__wasm::sink::SinkError> {
                    STATE.with(|state| $crate::__wasm::sink_deliver(state, batch))
                }
            }
    $crate::__wasm::sink::__export_sink_world!(Export with_types_in $crate::__wasm::sink);
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn() = || $crate::__assert_sink::<$ty>();
    };
}

#[doc(hidden)]
pub fn __assert_filter<T: Filter>() {}

#[doc(hidden)]
pub fn __assert_sink<T: Sink>() {}
