//! Picking the compute devices from their names on the command line, and the CPU threads.

use anyhow::{Result, bail};
use burn::tensor::Device;
use vit::model::Precision;

/// `cpu` is burn-flex; `ndarray` is burn-ndarray (Cargo feature `ndarray`);
/// `tch`, `tch:cpu`, `tch:cuda:N` are libtorch (Cargo feature `tch`).
pub fn parse(name: &str) -> Result<Device> {
    match parse_list(name)?.as_slice() {
        [device] => Ok(device.clone()),
        _ => bail!("`{name}` names several devices; this command runs on one"),
    }
}

/// The devices a training run holds a replica on: one name as [`parse`] takes, `cpu*N`
/// (N replicas on the CPU), `tch:cuda:0,1,3` (or `tch:cuda:0,tch:cuda:1`) and
/// `tch:cuda:all`. The first device keeps the weights, the optimizer and evaluation.
pub fn parse_list(spec: &str) -> Result<Vec<Device>> {
    let names = expand(spec)?;
    let devices = names
        .iter()
        .map(|name| parse_one(name))
        .collect::<Result<Vec<_>>>()?;
    let first_kind = kind(&names[0]);
    if let Some(other) = names.iter().find(|name| kind(name) != first_kind) {
        bail!(
            "`{spec}` mixes backends ({} and {other}); all replicas run on one backend",
            names[0]
        );
    }
    Ok(devices)
}

/// Refuses a `--precision` that the devices of `spec` (a device list) do not compute in:
/// bfloat16 runs on libtorch only.
pub fn check_precision(spec: &str, precision: Precision) -> Result<()> {
    if precision == Precision::Bf16 && kind(spec.trim()) != "tch" {
        bail!(
            "--precision bf16 runs on libtorch devices (--device tch:cuda:N or tch:cpu, with a              trainer built with the `tch` feature); `{spec}` computes in float32 only"
        );
    }
    Ok(())
}

/// The names in a device list, one per replica, without resolving them.
fn expand(spec: &str) -> Result<Vec<String>> {
    let spec = spec.trim();
    if let Some((name, count)) = spec.split_once('*') {
        let count: usize = count.trim().parse().map_err(|_| {
            anyhow::anyhow!("bad device list `{spec}`: expected NAME*N, e.g. cpu*2")
        })?;
        if count == 0 {
            bail!("bad device list `{spec}`: at least one replica");
        }
        if !matches!(name.trim(), "cpu" | "flex") {
            bail!(
                "bad device list `{spec}`: NAME*N is for CPU replicas (cpu*N); list GPUs one \
                 by one (tch:cuda:0,1) or take them all (tch:cuda:all)"
            );
        }
        return Ok(vec![name.trim().to_string(); count]);
    }
    if spec == "tch:cuda:all" {
        return all_cuda();
    }
    // `tch:cuda:0,1`: a bare index continues the name before it.
    let mut names: Vec<String> = Vec::new();
    for part in spec.split(',').map(str::trim) {
        let name = match (part.parse::<usize>(), names.last()) {
            (Ok(index), Some(previous)) if previous.starts_with("tch:cuda:") => {
                format!("tch:cuda:{index}")
            }
            _ => part.to_string(),
        };
        if name.is_empty() {
            bail!("bad device list `{spec}`: an empty name");
        }
        if names.contains(&name) {
            bail!(
                "`{name}` appears twice in `{spec}`; each GPU holds one replica (cpu*N for \
                 several on the CPU)"
            );
        }
        names.push(name);
    }
    Ok(names)
}

/// The backend a device name belongs to.
fn kind(name: &str) -> &str {
    name.split(':').next().unwrap_or(name)
}

#[cfg(feature = "tch")]
fn all_cuda() -> Result<Vec<String>> {
    let count = cuda_count();
    if count == 0 {
        bail!("tch:cuda:all: libtorch sees no CUDA device on this machine");
    }
    Ok((0..count)
        .map(|index| format!("tch:cuda:{index}"))
        .collect())
}

#[cfg(not(feature = "tch"))]
fn all_cuda() -> Result<Vec<String>> {
    bail!("tch:cuda:all needs a trainer built with the `tch` feature (see the README)")
}

#[cfg(feature = "tch")]
fn cuda_count() -> usize {
    Device::enumerate(burn::tensor::DeviceType::LibTorch).len()
}

fn parse_one(name: &str) -> Result<Device> {
    #[cfg(feature = "tch")]
    #[allow(deprecated)] // burn-tch is the GPU path the project builds today
    if let Some(rest) = name.strip_prefix("tch") {
        return match rest.trim_start_matches(':') {
            "" | "cpu" => Ok(Device::libtorch()),
            cuda => match cuda.strip_prefix("cuda").map(|i| i.trim_start_matches(':')) {
                Some(index) => {
                    let index = if index.is_empty() {
                        0
                    } else {
                        index.parse::<usize>().map_err(|_| {
                            anyhow::anyhow!("bad device `{name}`: expected tch:cuda:N")
                        })?
                    };
                    let count = cuda_count();
                    if index >= count {
                        bail!(
                            "there is no `{name}`: libtorch sees {count} CUDA device(s) here{}",
                            if count > 0 {
                                format!(" (tch:cuda:0 to tch:cuda:{})", count - 1)
                            } else {
                                String::new()
                            }
                        );
                    }
                    Ok(Device::libtorch_cuda(index))
                }
                None => bail!("unknown libtorch device `{name}`; use tch:cpu or tch:cuda:N"),
            },
        };
    }
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)] // kept selectable on purpose, to compare against flex
        "ndarray" => Ok(Device::ndarray()),
        other if other.starts_with("tch") => bail!(
            "`{other}` needs a trainer built with the `tch` feature (libtorch; see the README)"
        ),
        other => bail!(
            "unknown device `{other}`; available: cpu, cpu*N{}{}",
            if cfg!(feature = "ndarray") {
                ", ndarray"
            } else {
                ""
            },
            if cfg!(feature = "tch") {
                ", tch:cpu, tch:cuda:N, tch:cuda:0,1, tch:cuda:all"
            } else {
                ""
            }
        ),
    }
}

/// Runs `work` on a thread of the pool that burn-flex's kernels and the input pipeline
/// share (inline when already on one), and waits for it: a kernel that splits its work
/// then runs one part on this thread and leaves the other to an idle worker, instead of
/// the main thread handing every part to the pool, waking its threads and sleeping until
/// they are done. Thousands of such hand-overs a step: ViT-B/16's training step took
/// 10.6 s from the main thread against 9.3 s on the pool here (2 pairs), the demo model's
/// 178 against 167 ms (6 pairs; `trainer bench --train`, medians of alternated runs). Not
/// for work that blocks waiting on other threads' use of the pool (data-parallel
/// replicas): it would keep this thread from helping them.
pub fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| work())
}

/// Sizes the global thread pool that burn-flex and the input pipeline share
/// (`None`: one thread per core), and libtorch's own pool where it is built in.
/// Must run before any computation.
pub fn configure_threads(threads: Option<usize>) -> Result<()> {
    let Some(threads) = threads else {
        return Ok(());
    };
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    // `--device tch:cpu` computes on libtorch's OpenMP pool, not on rayon's.
    #[cfg(feature = "tch")]
    tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|error| anyhow::anyhow!("cannot start {threads} threads: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists_expand_to_one_name_per_replica() {
        assert_eq!(expand("cpu").unwrap(), ["cpu"]);
        assert_eq!(expand("cpu*3").unwrap(), ["cpu", "cpu", "cpu"]);
        assert_eq!(
            expand("tch:cuda:0,1, 3").unwrap(),
            ["tch:cuda:0", "tch:cuda:1", "tch:cuda:3"]
        );
        assert_eq!(
            expand("tch:cuda:0,tch:cuda:2").unwrap(),
            ["tch:cuda:0", "tch:cuda:2"]
        );
        for bad in ["cpu*0", "cpu*x", "tch:cuda:0*2", "tch:cuda:0,0", "cpu,", ""] {
            assert!(expand(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_replicas_resolve_and_bad_names_say_what_is_available() {
        assert_eq!(parse_list("cpu*2").unwrap().len(), 2);
        assert!(parse("cpu").is_ok());
        let error = parse("cpu*2").unwrap_err().to_string();
        assert!(error.contains("several devices"), "{error}");
        let error = parse_list("gpu").unwrap_err().to_string();
        assert!(
            error.contains("unknown device `gpu`") && error.contains("cpu*N"),
            "{error}"
        );
        let error = parse_list("cpu,tch:cpu").unwrap_err().to_string();
        assert!(error.contains("tch") || error.contains("mixes"), "{error}");
        #[cfg(not(feature = "tch"))]
        {
            let error = parse_list("tch:cuda:9").unwrap_err().to_string();
            assert!(error.contains("`tch` feature"), "{error}");
            let error = parse_list("tch:cuda:all").unwrap_err().to_string();
            assert!(error.contains("`tch` feature"), "{error}");
        }
    }
}
