//! Picking the compute device from its name on the command line.

use anyhow::{Result, bail};
use burn::tensor::Device;

/// `cpu` is burn-flex; `ndarray` is burn-ndarray (Cargo feature `ndarray`).
pub fn parse(name: &str) -> Result<Device> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)] // kept selectable on purpose, to compare against flex
        "ndarray" => Ok(Device::ndarray()),
        other => bail!(
            "unknown device `{other}`; available: cpu{}",
            if cfg!(feature = "ndarray") {
                ", ndarray"
            } else {
                ""
            }
        ),
    }
}
