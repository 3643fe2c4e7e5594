//! `trainer`: fine-tune Vision Transformers, evaluate, predict and export, from the
//! command line.

/// burn allocates every tensor afresh and frees it soon after. With glibc's allocator,
/// blocks over its mmap threshold (a few MB: most activations) go back to the kernel
/// when freed and come back as fresh pages, zeroed in page faults: a quarter of a
/// training step on the demo model went to that. mimalloc keeps and reuses them (but see
/// [`keep_freed_memory`]).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_e`, `mimalloc.h`, which
/// `libmimalloc-sys` does not name).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to hand freed memory back to the kernel. By default it does so
/// ("purges") a second after a block is freed, and a training step frees and allocates
/// gigabytes of activations: ViT-B/16's update (batch 16) took 200,000 page faults, the
/// kernel zeroing each page again, and 20% longer than with this (`perf stat`). The price:
/// the process keeps its peak memory (B/16 training: 3.9 GB instead of 3.2 GB).
fn keep_freed_memory() {
    // SAFETY: sets one integer option of mimalloc; any thread may, at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

mod augment;
mod bench;
mod checkpoint;
mod cli;
mod data;
mod device;
mod ema;
mod eval;
mod export;
mod info;
mod metrics;
mod mixing;
mod optimizer;
mod output;
mod parameters;
mod pipeline;
mod plot;
mod predict;
mod pretrained;
mod progress;
mod recipe;
mod schedule;
mod train;
mod trivial_augment;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

fn main() {
    keep_freed_memory();
    let matches = cli::Cli::command().get_matches();
    let cli = match cli::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let result = match cli.command {
        None => train(&cli.train, &matches),
        Some(cli::Command::Train(args)) => {
            let sub = matches.subcommand_matches("train").unwrap_or(&matches);
            train(&args, sub)
        }
        Some(cli::Command::Predict(args)) => predict::run(&args),
        Some(cli::Command::Export(args)) => export::run(&args),
        Some(cli::Command::Eval(args)) => eval::run(&args),
        Some(cli::Command::Info(args)) => info::run(&args),
        Some(cli::Command::Bench(args)) => bench::run(&args),
    };
    if let Err(error) = result {
        if disk_full(&error) {
            eprintln!(
                "error: the disk is full: {}. Free some space and run the command again \
                 (a training run continues from its last checkpoint with --resume)",
                one_line(&error)
            );
        } else {
            eprintln!("error: {}", one_line(&error));
        }
        std::process::exit(1);
    }
}

/// Whether `error` comes from a full disk (or an exhausted quota).
fn disk_full(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        })
    })
}

/// The error and its causes on one line, as `a: b: c`. A cause whose text the line
/// already holds is left out (many errors print their source in their own message, and
/// the image decoders' messages repeat theirs), and line breaks become spaces.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn train(args: &cli::TrainArgs, matches: &ArgMatches) -> anyhow::Result<()> {
    // Options typed on the command line, which a resumed run checks against its recipe.
    let explicit: Vec<String> = matches
        .ids()
        .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.to_string())
        .collect();
    if train::run(args, &explicit)? == train::Completion::Interrupted {
        // The conventional status of a program stopped by SIGINT.
        std::process::exit(130);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot access x: {source}")]
    struct Access {
        source: std::io::Error,
    }

    #[test]
    fn errors_print_on_one_line_without_repeating_their_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(Access { source: io }).context("cannot load");
        assert_eq!(
            one_line(&error),
            "cannot load: cannot access x: no such file"
        );
        let multi =
            anyhow::anyhow!("decoding failed:\n  not enough bytes").context("cannot use image");
        assert_eq!(
            one_line(&multi),
            "cannot use image: decoding failed: not enough bytes"
        );
    }

    #[test]
    fn the_purge_delay_option_is_mimallocs() {
        // Its default in mimalloc 3 (1000 ms, `options.c`) where we think it is, and what
        // we set it to after.
        // SAFETY: reads an integer option (the test binary runs mimalloc too).
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(get(), 1000);
        }
        keep_freed_memory();
        assert_eq!(get(), -1);
    }
}
