//! # sluice-sdk: write a sluice model in plain Rust
//!
//! A sluice model is a WebAssembly component that exports the `sluice:model/predictor`
//! interface (see `wit/` in the repository). This crate hides the generated bindings: you
//! implement the [`Model`] trait on an ordinary struct and call [`export_model!`] once.
//!
//! ```no_run
//! use sluice_sdk::{Dtype, Model, ModelError, ModelInfo, Tensor, TensorSpec};
//!
//! /// Doubles every number it is given.
//! struct Doubler;
//!
//! impl Model for Doubler {
//!     fn init(_config: &[u8]) -> Result<Self, ModelError> {
//!         Ok(Doubler)
//!     }
//!
//!     fn info(&self) -> ModelInfo {
//!         ModelInfo {
//!             name: "doubler".into(),
//!             version: "1".into(),
//!             inputs: vec![TensorSpec::new("x", Dtype::Fp32, &[-1, 4])],
//!             outputs: vec![TensorSpec::new("y", Dtype::Fp32, &[-1, 4])],
//!             max_batch: 64,
//!         }
//!     }
//!
//!     fn predict(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
//!         let x = sluice_sdk::input(&inputs, "x")?;
//!         let doubled: Vec<f32> = x.to_f32()?.iter().map(|v| v * 2.0).collect();
//!         Ok(vec![Tensor::from_f32("y", &x.shape, &doubled)])
//!     }
//! }
//!
//! sluice_sdk::export_model!(Doubler);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type `cdylib`); the
//! `.wasm` file in `target/wasm32-wasip2/release/` is the component to load.
//!
//! Heavy math can run on the host through [`compute::DeviceTensor`]: upload weights once in
//! [`Model::init`], then each batch costs one upload and a few host calls. A whole graph (an
//! ONNX file) runs on the host through the standard `wasi:nn` interfaces: see [`nn`].

pub mod compute;
pub mod nn;
pub mod params;
mod tensor;

use std::any::Any;
use std::cell::RefCell;

pub use tensor::{classifier_info, classifier_outputs, input};

/// The raw bindings generated from the WIT contract. Model authors should not need them; they
/// are public only so that [`export_model!`] can reach them from another crate.
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "model",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "sluice_sdk::bindings",
        generate_all,
    });
}

pub use bindings::sluice::model::types::{Dtype, ModelError, ModelInfo, Tensor, TensorSpec};

/// A model: built from its config once per instance, then asked to predict batches.
///
/// The host never calls one instance concurrently, so `predict` takes `&mut self` and may keep
/// scratch buffers between calls.
pub trait Model: Sized + 'static {
    /// Builds the model from the config bytes given at load (typically its trained
    /// parameters). Return [`ModelError::Internal`] if they are unusable: the load then fails
    /// with your message.
    fn init(config: &[u8]) -> Result<Self, ModelError>;

    /// Describes the model's inputs and outputs. Called after [`Model::init`].
    fn info(&self) -> ModelInfo;

    /// Runs one batch. The host has checked `inputs` against [`Model::info`]: every declared
    /// input is present with the declared dtype and shape, and all share `shape[0]`, the batch
    /// size. Return one tensor per declared output with the same batch size.
    fn predict(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError>;
}

/// Exports a [`Model`] implementation as the component's `predictor`. Call it exactly once,
/// at the top level of your crate.
///
/// On targets other than wasm32 it exports nothing, so the same crate can also be compiled
/// natively (for unit tests, or as the native baseline of a benchmark); there it only names the
/// model's `init`, so that the compiler does not call the model's type and methods unused.
#[macro_export]
macro_rules! export_model {
    ($model:ty) => {
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn(&[u8]) -> ::std::result::Result<$model, $crate::ModelError> =
            <$model as $crate::Model>::init;
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct SluiceExport;

            impl $crate::bindings::exports::sluice::model::predictor::Guest for SluiceExport {
                fn init(
                    config: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<(), $crate::ModelError> {
                    $crate::__private::init::<$model>(&config)
                }
                fn info() -> $crate::ModelInfo {
                    $crate::__private::info::<$model>()
                }
                fn predict(
                    inputs: ::std::vec::Vec<$crate::Tensor>,
                ) -> ::std::result::Result<::std::vec::Vec<$crate::Tensor>, $crate::ModelError>
                {
                    $crate::__private::predict::<$model>(inputs)
                }
            }

    $crate::bindings::export_bindings!(SluiceExport with_types_in $crate::bindings);
        };
    };
}

/// Glue called by [`export_model!`]: keeps the one model instance of this component.
#[doc(hidden)]
pub mod __private {
    use super::*;

    thread_local! {
        // A component instance is single-threaded; this holds the model between calls.
        static MODEL: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    fn with_model<M: Model, R>(f: impl FnOnce(&mut M) -> R) -> R {
        MODEL.with_borrow_mut(|slot| {
            let model = slot
                .as_mut()
                .and_then(|m| m.downcast_mut::<M>())
                .expect("sluice-sdk: the host called the model before init succeeded");
            f(model)
        })
    }

    /// Builds the model and keeps it for later calls.
    pub fn init<M: Model>(config: &[u8]) -> Result<(), ModelError> {
        install_panic_hook();
        let model = M::init(config)?;
        MODEL.with_borrow_mut(|slot| *slot = Some(Box::new(model)));
        Ok(())
    }

    /// Prints a panic as one line, `panic at FILE:LINE: MESSAGE`, to stderr. The host shows
    /// the last lines a model printed in the error of the call that trapped, so the client
    /// sees the message without the std hook's extra lines.
    fn install_panic_hook() {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                let location = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let message = info.payload_as_str().unwrap_or("(no message)");
                eprintln!("panic{location}: {message}");
            }));
        });
    }

    /// Describes the initialised model.
    pub fn info<M: Model>() -> ModelInfo {
        with_model::<M, _>(|m| m.info())
    }

    /// Runs one batch on the initialised model.
    pub fn predict<M: Model>(inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        with_model::<M, _>(|m| m.predict(inputs))
    }
}
