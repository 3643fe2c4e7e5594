//! Progress bars on stderr. indicatif hides them when stderr is not a terminal
//! (logs, CI); lines printed through [`log`] appear either way.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Steps of a training run: `step/total [bar] loss lr images/s ETA`.
pub fn training(total_steps: usize, completed: usize) -> ProgressBar {
    let bar = ProgressBar::new(total_steps as u64).with_position(completed as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "step {pos}/{len} [{bar:30.cyan/blue}] {msg} · {elapsed_precise} elapsed, ETA {eta_precise}",
        )
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}

/// Images of an evaluation pass.
pub fn images(total: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{pos}}/{{len}} images [{{bar:30}}] ETA {{eta}}"
        ))
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    bar
}

/// Bytes of a download, fed by the downloader's `(done, total)` callback.
pub fn download() -> impl FnMut(u64, Option<u64>) {
    let bar = ProgressBar::no_length();
    bar.set_style(
        ProgressStyle::with_template(
            "  {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec}, ETA {eta}",
        )
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    move |done, total| {
        if let Some(total) = total {
            bar.set_length(total);
        }
        bar.set_position(done);
        if total.is_some_and(|total| done >= total) {
            bar.finish();
        }
    }
}

/// Prints a line above the bar (or plainly when the bar is hidden).
pub fn log(bar: &ProgressBar, line: &str) {
    bar.suspend(|| eprintln!("{line}"));
}
