//! `trainer`: fine-tune Vision Transformers, predict and export, from the command line.

mod bench;
mod cli;
mod device;
mod export;
mod predict;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Predict(args) => predict::run(&args),
        cli::Command::Export(args) => export::run(&args),
        cli::Command::Bench(args) => bench::run(&args),
    };
    if let Err(error) = result {
        // `{:#}` prints the whole context chain on one line.
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
