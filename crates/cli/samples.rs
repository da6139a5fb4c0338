//! The bundled sample models as a model repository: `DIR/<name>/1/model.wasm`, the trained
//! parameters, and a `config.toml` (what `sluice serve` with no flags serves, and what
//! `sluice init-repo` writes).

use sluice_samples::SAMPLE_MODELS;
use sluice_serving::repository::{COMPONENT_FILE, CONFIG_FILE};

/// Writes the sample models to `dir`, each asking for `replicas` replicas.
pub(crate) fn write_sample_repository(
    dir: &std::path::Path,
    replicas: usize,
) -> std::io::Result<()> {
    for sample in SAMPLE_MODELS {
        let version_dir = dir.join(sample.name).join("1");
        std::fs::create_dir_all(&version_dir)?;
        std::fs::write(version_dir.join(COMPONENT_FILE), sample.component)?;
        std::fs::write(version_dir.join("params.slpm"), sample.config)?;
        std::fs::write(
            version_dir.join(CONFIG_FILE),
            format!("replicas = {replicas}\nconfig = \"params.slpm\"\n"),
        )?;
    }
    Ok(())
}
