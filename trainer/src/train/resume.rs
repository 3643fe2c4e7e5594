//! Continuing a run: finding its checkpoint and keeping its recipe.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::checkpoint::{self, State};
use crate::cli::TrainArgs;

/// What a run writes in its work folder (besides files inside these folders). A new run
/// replaces them only with `--force`: they may be another run's results, or the user's.
const RUN_FILES: &[&str] = &[
    "config.json",
    "metrics.jsonl",
    "curves.svg",
    "summary.md",
    "export",
    // Without a `state.json` inside (else `find` reports a run): not ours, perhaps.
    "checkpoint",
];

/// A new run must not silently replace one that can still be resumed (not even with
/// `force`: a checkpoint may hold days of training), nor, without `force`, any file
/// of an earlier run or of the user's.
pub fn refuse_to_overwrite(workdir: &Path, force: bool) -> Result<()> {
    if let Some((dir, state)) = checkpoint::find(workdir)? {
        bail!(
            "{} already holds a run (checkpoint at step {} of {}); continue it with --resume, \
             or choose another --workdir (or delete {})",
            workdir.display(),
            state.step,
            state.args.recipe.steps,
            dir.display()
        );
    }
    // Refused here, before the data is loaded, not when the folder is first written.
    if workdir.exists() && !workdir.is_dir() {
        bail!("--workdir {} exists and is not a folder", workdir.display());
    }
    let present = RUN_FILES.iter().find(|file| workdir.join(file).exists());
    if let (Some(file), false) = (present, force) {
        bail!(
            "{} already holds {file}, which a new run would replace, and no run that \
             --resume could continue; pass --force to replace the files there, or choose \
             another --workdir",
            workdir.display()
        );
    }
    Ok(())
}

/// The checkpoint to resume and its options: the saved recipe, with the runtime
/// options given on the command line now (`explicit` names those, by clap id).
/// Recipe options given anew must agree with the saved ones.
pub fn resume_point(args: &TrainArgs, explicit: &[String]) -> Result<(PathBuf, State)> {
    let workdir = &args.workdir;
    // A crash or a full disk while a checkpoint was written leaves `checkpoint.partial`
    // (or only `checkpoint.previous`): clear that up now, not at the first save, so that
    // the space is free again and the run resumes from its last whole checkpoint.
    checkpoint::tidy(workdir)?;
    let Some((dir, mut state)) = checkpoint::find(workdir)? else {
        // A run that failed before its first checkpoint left files that a new run
        // replaces only with --force: say so, rather than advise what is then refused.
        let again = if RUN_FILES.iter().any(|file| workdir.join(file).exists()) {
            " (with --force, to replace the files already there)"
        } else {
            ""
        };
        bail!(
            "there is no checkpoint in {} to resume; check --workdir, or start the run again \
             without --resume{again}",
            workdir.display()
        );
    };
    if args.preset.is_some() {
        bail!(
            "a resumed run keeps its recipe: drop --preset (the run's options are in its checkpoint)"
        );
    }
    let given = args.options(explicit)?;
    let runtime = given.runtime_names();
    let now = serde_json::to_value(&given)?;
    let mut saved = serde_json::to_value(&state.args)?;
    let mut conflicts = Vec::new();
    for id in explicit.iter().filter(|id| now.get(id.as_str()).is_some()) {
        if runtime.contains(id) {
            saved[id] = now[id].clone();
        } else if now[id] != saved[id] {
            conflicts.push(format!(
                "--{} {} (the run has {})",
                id.replace('_', "-"),
                now[id],
                saved[id]
            ));
        }
    }
    if !conflicts.is_empty() {
        bail!(
            "a resumed run keeps its recipe, but these options differ: {}; drop them, or start a new run in another --workdir",
            conflicts.join(", ")
        );
    }
    // The folder it was found in, wherever the run was first started.
    saved["workdir"] = now["workdir"].clone();
    state.args = serde_json::from_value(saved).context("cannot merge the saved options")?;
    // The saved recipe must pass the checks a new run's does (it may predate one, such
    // as --warmup's, or state.json may have been edited); it cannot change on resuming.
    state.args.recipe.validate().with_context(|| {
        format!(
            "the run in {} cannot be resumed, its recipe is refused (start a new run in \
             another --workdir)",
            workdir.display()
        )
    })?;
    Ok((dir, state))
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use burn::tensor::Device;
    use clap::Parser;
    use vit::VisionTransformer;

    use super::*;
    use crate::optimizer::{Optimizer, Rule};

    #[test]
    fn resuming_first_clears_what_a_failed_checkpoint_write_left() {
        let workdir = tempfile::tempdir().expect("tempdir");
        let model = VisionTransformer::new(
            &crate::train::tests::tiny_config(),
            &Device::flex().autodiff(),
        )
        .expect("model");
        let state = State {
            step: 2,
            args: crate::cli::tests::options(&[]),
            classes: vec!["a".into(), "b".into(), "c".into()],
        };
        let optimizer = Optimizer::new(Rule::Sgd { momentum: 0.9 });
        checkpoint::save(workdir.path(), &model, &optimizer, None, &state).expect("save");
        // What a crash (or a full disk) while writing the next checkpoint leaves.
        let partial = workdir.path().join("checkpoint.partial");
        std::fs::create_dir_all(&partial).expect("folder");
        std::fs::write(partial.join("model.safetensors"), "half").expect("write");
        let command_line: Vec<OsString> = vec![
            "trainer".into(),
            "--resume".into(),
            "--workdir".into(),
            workdir.path().into(),
        ];
        let cli = crate::cli::Cli::parse_from(command_line);
        let explicit = ["resume".to_string(), "workdir".to_string()];
        let (dir, found) = resume_point(&cli.train, &explicit).expect("resume");
        assert_eq!((dir, found.step), (checkpoint::dir(workdir.path()), 2));
        assert!(!partial.exists());
    }
}
