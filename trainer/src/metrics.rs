//! What a run records in its work folder: `metrics.jsonl` (one JSON object per
//! logged step), `curves.svg` (loss and accuracy against step) and `summary.md`
//! (the reference run's table: step | train loss | test accuracy).

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::plot::{self, MetricPoint};

const METRICS_FILE: &str = "metrics.jsonl";

pub struct Metrics {
    workdir: PathBuf,
    file: BufWriter<File>,
    points: Vec<MetricPoint>,
}

impl Metrics {
    /// Starts `metrics.jsonl` afresh.
    pub fn create(workdir: &Path) -> Result<Self> {
        let path = workdir.join(METRICS_FILE);
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self {
            workdir: workdir.to_path_buf(),
            file: BufWriter::new(file),
            points: Vec::new(),
        })
    }

    /// Continues `metrics.jsonl` after step `completed`: lines logged after the
    /// checkpoint (by the run that stopped) are dropped, since they will be redone.
    pub fn resume(workdir: &Path, completed: usize) -> Result<Self> {
        let path = workdir.join(METRICS_FILE);
        let text = fs::read_to_string(&path).unwrap_or_default();
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<Value>(line)
                    .ok()
                    .and_then(|value| value["step"].as_u64())
                    .is_some_and(|step| step as usize <= completed)
            })
            .collect();
        let points = kept
            .iter()
            .filter_map(|line| point(&serde_json::from_str(line).ok()?))
            .collect();
        let mut rewritten = kept.join("\n");
        if !rewritten.is_empty() {
            rewritten.push('\n');
        }
        vit::checkpoint::write_atomically(&path, rewritten.as_bytes())?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self {
            workdir: workdir.to_path_buf(),
            file: BufWriter::new(file),
            points,
        })
    }

    /// Appends one line, flushed at once so that nothing is lost on a crash.
    pub fn record(&mut self, line: &Value) -> Result<()> {
        writeln!(self.file, "{line}")?;
        self.file.flush().context("cannot write metrics.jsonl")?;
        if let Some(point) = point(line) {
            self.points.push(point);
        }
        Ok(())
    }

    /// Redraws `curves.svg` from everything recorded so far.
    pub fn write_plot(&self) -> Result<()> {
        let path = self.workdir.join("curves.svg");
        vit::checkpoint::write_atomically(&path, plot::training_curves(&self.points).as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The reference run's table, printed and saved as `summary.md`.
    /// The last test accuracy recorded (the final evaluation's, when the run finished).
    pub fn final_test_accuracy(&self) -> Option<f64> {
        self.points
            .iter()
            .rev()
            .find_map(|point| point.test_accuracy)
    }

    pub fn write_summary(&self) -> Result<String> {
        let mut table = String::from("| step | train loss | test accuracy |\n|---:|---:|---:|\n");
        for point in &self.points {
            if let Some(accuracy) = point.test_accuracy {
                table.push_str(&format!(
                    "| {} | {:.4} | {:.2}% |\n",
                    point.step,
                    point.loss,
                    accuracy * 100.0
                ));
            }
        }
        fs::write(self.workdir.join("summary.md"), &table).context("cannot write summary.md")?;
        Ok(table)
    }
}

fn point(line: &Value) -> Option<MetricPoint> {
    Some(MetricPoint {
        step: line["step"].as_u64()? as usize,
        loss: line["loss"].as_f64()?,
        test_accuracy: line["test_accuracy"].as_f64(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn resuming_drops_the_lines_after_the_checkpoint_and_keeps_the_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut metrics = Metrics::create(dir.path()).expect("create");
        for step in 1..=4 {
            let mut line = json!({"step": step, "loss": 1.0 / step as f64});
            if step % 2 == 0 {
                line["test_accuracy"] = json!(step as f64 / 10.0);
            }
            metrics.record(&line).expect("record");
        }
        drop(metrics);
        let mut resumed = Metrics::resume(dir.path(), 2).expect("resume");
        resumed
            .record(&json!({"step": 3, "loss": 0.3}))
            .expect("record");
        let text = fs::read_to_string(dir.path().join(METRICS_FILE)).expect("read");
        let steps: Vec<u64> = text
            .lines()
            .map(|line| {
                serde_json::from_str::<Value>(line).expect("json")["step"]
                    .as_u64()
                    .expect("step")
            })
            .collect();
        assert_eq!(steps, [1, 2, 3]);
        let table = resumed.write_summary().expect("summary");
        assert!(table.contains("| 2 | 0.5000 | 20.00% |"), "{table}");
        assert!(!table.contains("| 4 |"), "{table}");
        resumed.write_plot().expect("plot");
        assert!(dir.path().join("curves.svg").exists());
    }
}
