//! What the benchmark programs that drive a separate `sluice serve` process share: starting
//! it and learning its ports, reading its resident memory, and a one-digit request.

use sluice_api::proto;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// A running `sluice serve` process, killed when dropped.
pub struct ServeProcess {
    /// The process.
    pub child: Child,
    /// Its gRPC address.
    pub grpc: SocketAddr,
    /// Its HTTP address.
    pub http: SocketAddr,
}

impl ServeProcess {
    /// Runs `command` (a `sluice serve` whose ports may be 0) and waits for the lines in
    /// which it names its ports.
    pub fn start(mut command: Command) -> anyhow::Result<ServeProcess> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut line = |prefix: &str| -> anyhow::Result<SocketAddr> {
            let mut text = String::new();
            std::io::BufRead::read_line(&mut stdout, &mut text)?;
            let addr = text
                .trim()
                .strip_prefix(prefix)
                .ok_or_else(|| anyhow::anyhow!("unexpected line from sluice serve: {text:?}"))?;
            Ok(addr.parse()?)
        };
        let grpc = line("listening on ")?;
        let http = line("http on ")?;
        Ok(ServeProcess { child, grpc, http })
    }

    /// Its resident memory, in MiB.
    pub fn resident_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `Predict` of `model` for one digit's 64 pixels.
pub fn digit_request(model: &str, pixels: &[f32]) -> proto::PredictRequest {
    proto::PredictRequest {
        model: model.into(),
        inputs: vec![proto::Tensor {
            name: "pixels".into(),
            datatype: proto::DataType::Fp32 as i32,
            shape: vec![1, 64],
            data: pixels.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }],
        ..Default::default()
    }
}
