//! Picking the compute device from its name on the command line, and the CPU threads.

use anyhow::{Result, bail};
use burn::tensor::Device;

/// `cpu` is burn-flex; `ndarray` is burn-ndarray (Cargo feature `ndarray`);
/// `tch`, `tch:cpu`, `tch:cuda:N` are libtorch (Cargo feature `tch`).
pub fn parse(name: &str) -> Result<Device> {
    #[cfg(feature = "tch")]
    #[allow(deprecated)] // burn-tch is the GPU path the project builds today
    if let Some(rest) = name.strip_prefix("tch") {
        return match rest.trim_start_matches(':') {
            "" | "cpu" => Ok(Device::libtorch()),
            cuda => match cuda.strip_prefix("cuda").map(|i| i.trim_start_matches(':')) {
                Some("") => Ok(Device::libtorch_cuda(0)),
                Some(index) => Ok(Device::libtorch_cuda(index.parse::<usize>().map_err(
                    |_| anyhow::anyhow!("bad device `{name}`: expected tch:cuda:N"),
                )?)),
                None => bail!("unknown libtorch device `{name}`; use tch:cpu or tch:cuda:N"),
            },
        };
    }
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

/// Sizes the global thread pool that burn-flex and the input pipeline share
/// (`None`: one thread per core). Must run before any computation.
pub fn configure_threads(threads: Option<usize>) -> Result<()> {
    let Some(threads) = threads else {
        return Ok(());
    };
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|error| anyhow::anyhow!("cannot start {threads} threads: {error}"))
}
