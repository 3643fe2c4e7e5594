//! `trainer`: fine-tune Vision Transformers, evaluate, predict and export, from the
//! command line.

mod augment;
mod bench;
mod checkpoint;
mod cli;
mod data;
mod device;
mod eval;
mod export;
mod info;
mod metrics;
mod optimizer;
mod pipeline;
mod plot;
mod predict;
mod pretrained;
mod progress;
mod recipe;
mod schedule;
mod train;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

fn main() {
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
        // `{:#}` prints the whole context chain on one line.
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
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
