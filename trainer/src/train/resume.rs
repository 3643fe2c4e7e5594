//! Continuing a run: finding its checkpoint and keeping its recipe.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::checkpoint::{self, State};
use crate::cli::TrainArgs;

/// A new run must not silently replace one that can still be resumed.
pub fn refuse_to_overwrite(workdir: &Path) -> Result<()> {
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
    Ok(())
}

/// The checkpoint to resume and its options: the saved recipe, with the runtime
/// options given on the command line now (`explicit` names those, by clap id).
/// Recipe options given anew must agree with the saved ones.
pub fn resume_point(args: &TrainArgs, explicit: &[String]) -> Result<(PathBuf, State)> {
    let workdir = &args.workdir;
    let Some((dir, mut state)) = checkpoint::find(workdir)? else {
        bail!(
            "there is no checkpoint in {} to resume; check --workdir, or start without --resume",
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
    Ok((dir, state))
}
