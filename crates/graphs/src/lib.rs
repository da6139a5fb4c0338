//! # sluice-graphs: graphs the host runs natively
//!
//! A model's own code runs in the sandbox; the matrix products of a neural network need not.
//! Guests reach this crate through the standard `wasi:nn` interface (see `sluice-runtime`),
//! and `sluice load --onnx` serves a graph through it with no guest code of the user's.
//!
//! The engine is ONNX Runtime, chosen by measurement (`docs/benchmarks.md`): on a
//! MiniLM-sized encoder it is several times faster than tract. It is not linked: its shared
//! library (the one in the `onnxruntime` wheel on PyPI, for instance) is opened at run time
//! by [`OnnxRuntime::open`], so building sluice needs neither a download nor a C++ toolchain,
//! and a server without the library still serves everything else.
//!
//! A [`Graph`] is loaded once per model version and shared by all of its replicas. ONNX
//! Runtime parallelises inside one run (intra-op threads), so one run at a time per graph
//! (a mutex) keeps the cores busy without oversubscribing them; the batcher turns a queue
//! into larger batches instead.

mod watchdog;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{RunOptions, Session};
use ort::tensor::TensorElementType;
use ort::value::{DynValue, Tensor as OrtTensor, ValueType};
use sluice_types::{Dtype, ErrorKind, HasKind, Tensor, TensorSpec};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use thiserror::Error;

/// The ONNX Runtime release whose C API this build speaks (the `ort` crate's).
pub const ONNX_RUNTIME_VERSION: &str = "1.22";

/// The library's file name on this platform, as the dynamic loader looks it up.
pub const LIBRARY_NAME: &str = if cfg!(target_os = "macos") {
    "libonnxruntime.dylib"
} else if cfg!(target_os = "windows") {
    "onnxruntime.dll"
} else {
    "libonnxruntime.so"
};

/// Why a graph could not be loaded or run.
#[derive(Debug, Error)]
pub enum GraphError {
    /// ONNX Runtime's library could not be opened (or is the wrong release).
    #[error(
        "ONNX Runtime is not available: {0}. Install ONNX Runtime {ONNX_RUNTIME_VERSION} (for \
         instance `pip install onnxruntime=={ONNX_RUNTIME_VERSION}.1`) and give the path of its \
         {LIBRARY_NAME} with `--onnxruntime PATH` or ORT_DYLIB_PATH"
    )]
    Unavailable(String),
    /// The graph file is not one ONNX Runtime can load.
    #[error("the graph cannot be loaded: {0}")]
    Invalid(String),
    /// A tensor given to the graph does not fit it.
    #[error("{0}")]
    BadInput(String),
    /// ONNX Runtime failed while running the graph.
    #[error("the graph failed: {0}")]
    RunFailed(String),
    /// The run was stopped at its deadline.
    #[error("the graph run was stopped at its deadline")]
    TimedOut,
}

impl HasKind for GraphError {
    fn kind(&self) -> ErrorKind {
        match self {
            GraphError::Unavailable(_) => ErrorKind::FailedPrecondition,
            GraphError::Invalid(_) | GraphError::BadInput(_) => ErrorKind::InvalidArgument,
            GraphError::RunFailed(_) => ErrorKind::Internal,
            GraphError::TimedOut => ErrorKind::DeadlineExceeded,
        }
    }
}

/// The library the process opened (ONNX Runtime can be opened once per process): its path,
/// or why it could not be opened.
static LIBRARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// ONNX Runtime, opened: makes [`Graph`]s.
#[derive(Clone, Debug)]
pub struct OnnxRuntime {
    library: PathBuf,
    threads: usize,
}

impl OnnxRuntime {
    /// Opens ONNX Runtime's library: `library` if given, else `ORT_DYLIB_PATH`, else
    /// [`LIBRARY_NAME`] on the loader's search path. Each graph runs on `threads` intra-op
    /// threads (0: one per core). The library is opened once per process; asking for another
    /// one afterwards is an error.
    pub fn open(library: Option<&Path>, threads: usize) -> Result<OnnxRuntime, GraphError> {
        let wanted = library
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(LIBRARY_NAME));
        let opened = LIBRARY.get_or_init(|| open_library(&wanted));
        match opened {
            Ok(path) if library.is_none() || path == &wanted => Ok(OnnxRuntime {
                library: path.clone(),
                threads,
            }),
            Ok(path) => Err(GraphError::Unavailable(format!(
                "this process opened {} already and cannot open {} as well",
                path.display(),
                wanted.display()
            ))),
            Err(message) => Err(GraphError::Unavailable(message.clone())),
        }
    }

    /// The library this process opened.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// Loads the ONNX graph in `path`. Weights kept beside it (external data) are read from
    /// the files the graph names, relative to its folder.
    pub fn load_file(&self, path: &Path) -> Result<Graph, GraphError> {
        let resident = graph_file_bytes(path);
        let session = self
            .builder()?
            .commit_from_file(path)
            .map_err(|e| GraphError::Invalid(format!("{}: {e}", path.display())))?;
        Graph::new(session, resident)
    }

    /// Loads an ONNX graph from its bytes (a graph with all its weights inside).
    pub fn load_bytes(&self, bytes: &[u8]) -> Result<Graph, GraphError> {
        let session = self
            .builder()?
            .commit_from_memory(bytes)
            .map_err(|e| GraphError::Invalid(e.to_string()))?;
        Graph::new(session, bytes.len() as u64)
    }

    fn builder(&self) -> Result<ort::session::builder::SessionBuilder, GraphError> {
        let invalid = |e: ort::Error| GraphError::Invalid(e.to_string());
        let builder = Session::builder()
            .map_err(invalid)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(invalid)?
            .with_intra_threads(self.threads)
            .map_err(invalid)?
            .with_execution_providers([
                ort::execution_providers::CUDAExecutionProvider::default().build()
            ])
            .map_err(invalid)?;
        Ok(builder)
    }
}

/// Opens the library once; ONNX Runtime's loader panics on a missing file or a release
/// whose C API is too old, so the panic is caught and becomes the reason.
fn open_library(path: &Path) -> Result<PathBuf, String> {
    if path.components().count() > 1 && !path.exists() {
        return Err(format!("{} does not exist", path.display()));
    }
    let shown = path.display().to_string();
    // `ort` panics when the library does not open (and the panic hook prints that as a
    // crash), so open it here first; `ort` then opens the same library again. The
    // catch_unwind below stays for what else `ort`'s initialization may panic on.
    // SAFETY: this runs the library's initializers, which `ort` is about to run anyway.
    match unsafe { libloading::Library::new(path) } {
        // Kept loaded for the process's life, as `ort` keeps it: no unload and load again.
        Ok(library) => std::mem::forget(library),
        Err(e) => return Err(format!("{shown}: {e}")),
    }
    let committed = std::panic::catch_unwind(AssertUnwindSafe(|| {
        ort::init_from(shown.clone()).with_name("sluice").commit()
    }));
    match committed {
        Ok(Ok(_)) => {
            tracing::info!(library = %shown, "ONNX Runtime opened");
            Ok(path.to_path_buf())
        }
        Ok(Err(e)) => Err(format!("{shown}: {e}")),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| format!("opening {shown} failed"))),
    }
}

/// The bytes a graph file and the weight files beside it take: what loading it costs in
/// memory, near enough (ONNX Runtime may fold constants into new tensors).
fn graph_file_bytes(path: &Path) -> u64 {
    let own = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let beside = path
        .parent()
        .and_then(|dir| std::fs::read_dir(dir).ok())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".safetensors") || name.ends_with(".onnx.data") || name.ends_with(".bin")
        })
        .filter_map(|entry| entry.metadata().ok())
        .map(|m| m.len())
        .sum::<u64>();
    own + beside
}

/// A loaded graph: its signature, and a session that runs it.
pub struct Graph {
    session: Mutex<Session>,
    /// The graph's inputs (`-1` for a dimension it leaves free).
    pub inputs: Vec<TensorSpec>,
    /// The graph's outputs.
    pub outputs: Vec<TensorSpec>,
    /// Bytes the graph's file and weights take (what it is counted as against a budget).
    pub resident_bytes: u64,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("resident_bytes", &self.resident_bytes)
            .finish_non_exhaustive()
    }
}

impl Graph {
    fn new(session: Session, resident_bytes: u64) -> Result<Graph, GraphError> {
        let signature = |name: &str, ty: &ValueType| match ty {
            ValueType::Tensor { ty, shape, .. } => Ok(TensorSpec {
                name: name.to_string(),
                dtype: dtype_of(*ty).ok_or_else(|| {
                    GraphError::Invalid(format!(
                        "`{name}` has elements of type {ty}, which sluice does not serve"
                    ))
                })?,
                shape: shape.iter().copied().collect(),
            }),
            other => Err(GraphError::Invalid(format!(
                "`{name}` is a {other:?}, not a tensor; sluice serves graphs of tensors"
            ))),
        };
        let inputs = session
            .inputs
            .iter()
            .map(|i| signature(&i.name, &i.input_type))
            .collect::<Result<_, _>>()?;
        let outputs = session
            .outputs
            .iter()
            .map(|o| signature(&o.name, &o.output_type))
            .collect::<Result<_, _>>()?;
        Ok(Graph {
            session: Mutex::new(session),
            inputs,
            outputs,
            resident_bytes,
        })
    }

    /// Runs the graph on `inputs` (one per graph input, by name) and returns every output;
    /// a run still going at `deadline` is stopped ([`GraphError::TimedOut`]).
    pub fn run(
        &self,
        inputs: &[Tensor],
        deadline: Option<Instant>,
    ) -> Result<Vec<Tensor>, GraphError> {
        let mut values: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
        for tensor in inputs {
            let spec = self
                .inputs
                .iter()
                .find(|s| s.name == tensor.name)
                .ok_or_else(|| {
                    let names: Vec<&str> = self.inputs.iter().map(|s| s.name.as_str()).collect();
                    GraphError::BadInput(format!(
                        "the graph has no input `{}`; its inputs are {}",
                        tensor.name,
                        names.join(", ")
                    ))
                })?;
            if spec.dtype != tensor.dtype {
                return Err(GraphError::BadInput(format!(
                    "input `{}`: the graph takes {}, given {}",
                    tensor.name,
                    spec.dtype.name(),
                    tensor.dtype.name()
                )));
            }
            values.push((tensor.name.clone(), to_value(tensor)?));
        }
        // A run that panicked inside the lock poisons nothing that matters: the session holds
        // no state between runs.
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let options =
            Arc::new(RunOptions::new().map_err(|e| GraphError::RunFailed(e.to_string()))?);
        if let Some(deadline) = deadline {
            watchdog::stop_at(deadline, &options);
        }
        let outputs = session.run_with_options(values, &options).map_err(|e| {
            match deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                true => GraphError::TimedOut,
                false => GraphError::RunFailed(e.to_string()),
            }
        })?;
        outputs
            .iter()
            .map(|(name, value)| from_value(name, &value))
            .collect()
    }
}

fn dtype_of(ty: TensorElementType) -> Option<Dtype> {
    Some(match ty {
        TensorElementType::Float32 => Dtype::Fp32,
        TensorElementType::Float64 => Dtype::Fp64,
        TensorElementType::Int32 => Dtype::Int32,
        TensorElementType::Int64 => Dtype::Int64,
        TensorElementType::Uint8 => Dtype::Uint8,
        TensorElementType::Bool => Dtype::Boolean,
        _ => return None,
    })
}

/// Reads little-endian elements of `N` bytes.
fn elements<const N: usize, T>(data: &[u8], decode: fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|c| decode(c.try_into().expect("chunks of N")))
        .collect()
}

fn to_value(tensor: &Tensor) -> Result<DynValue, GraphError> {
    let shape: Vec<i64> = tensor.shape.iter().map(|&d| i64::from(d)).collect();
    let elements_expected = shape.iter().product::<i64>() as usize;
    let size = tensor.dtype.element_size().ok_or_else(|| {
        GraphError::BadInput(format!(
            "input `{}`: BYTES cannot go into a graph",
            tensor.name
        ))
    })?;
    if tensor.data.len() != elements_expected * size {
        return Err(GraphError::BadInput(format!(
            "input `{}`: shape {:?} needs {} bytes of {}, given {}",
            tensor.name,
            tensor.shape,
            elements_expected * size,
            tensor.dtype.name(),
            tensor.data.len()
        )));
    }
    let data = &tensor.data;
    let value = match tensor.dtype {
        Dtype::Fp32 => {
            OrtTensor::from_array((shape, elements(data, f32::from_le_bytes))).map(Into::into)
        }
        Dtype::Fp64 => {
            OrtTensor::from_array((shape, elements(data, f64::from_le_bytes))).map(Into::into)
        }
        Dtype::Int32 => {
            OrtTensor::from_array((shape, elements(data, i32::from_le_bytes))).map(Into::into)
        }
        Dtype::Int64 => {
            OrtTensor::from_array((shape, elements(data, i64::from_le_bytes))).map(Into::into)
        }
        Dtype::Uint8 => OrtTensor::from_array((shape, data.clone())).map(Into::into),
        Dtype::Boolean => {
            OrtTensor::from_array((shape, data.iter().map(|&b| b != 0).collect::<Vec<bool>>()))
                .map(Into::into)
        }
        Dtype::Bytes => unreachable!("BYTES has no element size"),
    };
    value.map_err(|e| GraphError::BadInput(format!("input `{}`: {e}", tensor.name)))
}

fn from_value(name: &str, value: &ort::value::ValueRef<'_>) -> Result<Tensor, GraphError> {
    let failed = |e: ort::Error| GraphError::RunFailed(format!("output `{name}`: {e}"));
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(GraphError::RunFailed(format!(
            "output `{name}` is not a tensor"
        )));
    };
    let dtype = dtype_of(*ty).ok_or_else(|| {
        GraphError::RunFailed(format!("output `{name}` has elements of type {ty}"))
    })?;
    fn bytes<T: ort::tensor::PrimitiveTensorElementType + Copy, const N: usize>(
        value: &ort::value::ValueRef<'_>,
        encode: fn(T) -> [u8; N],
    ) -> ort::Result<(Vec<u32>, Vec<u8>)> {
        let (shape, data) = value.try_extract_tensor::<T>()?;
        let shape = shape.iter().map(|&d| d as u32).collect();
        Ok((shape, data.iter().flat_map(|&v| encode(v)).collect()))
    }
    let (shape, data) = match dtype {
        Dtype::Fp32 => bytes::<f32, 4>(value, f32::to_le_bytes),
        Dtype::Fp64 => bytes::<f64, 8>(value, f64::to_le_bytes),
        Dtype::Int32 => bytes::<i32, 4>(value, i32::to_le_bytes),
        Dtype::Int64 => bytes::<i64, 8>(value, i64::to_le_bytes),
        Dtype::Uint8 => bytes::<u8, 1>(value, |v| [v]),
        Dtype::Boolean => bytes::<bool, 1>(value, |v| [u8::from(v)]),
        Dtype::Bytes => unreachable!("no graph output is BYTES"),
    }
    .map_err(failed)?;
    Ok(Tensor {
        name: name.to_string(),
        dtype,
        shape,
        data,
    })
}
