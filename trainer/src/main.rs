//! `trainer`: fine-tune Vision Transformers, predict and export, from the command line.

mod augment;
mod bench;
mod cli;
mod data;
mod device;
mod eval;
mod export;
mod optimizer;
mod predict;
mod pretrained;
mod schedule;
mod train;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        None => train::run(&cli.train),
        Some(cli::Command::Train(args)) => train::run(&args),
        Some(cli::Command::Predict(args)) => predict::run(&args),
        Some(cli::Command::Export(args)) => export::run(&args),
        Some(cli::Command::Bench(args)) => bench::run(&args),
    };
    if let Err(error) = result {
        // `{:#}` prints the whole context chain on one line.
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
