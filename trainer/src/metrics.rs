//! What a run records in its work folder: `metrics.jsonl` (one JSON object per
//! logged step), `curves.svg` (loss and accuracy against step) and `summary.md`
//! (the reference run's table: step | train loss | test accuracy).

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::plot::{self, MetricPoint};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    /// The update, counted from 1.
    pub step: usize,
    /// Mean training loss of the update's batch, before the update.
    pub loss: f64,
    /// The learning rate the update used.
    pub lr: f64,
    /// Global norm of the averaged gradients, before clipping.
    pub grad_norm: f64,
    pub images_per_sec: f64,
    /// On evaluation steps: the fraction of test images classified correctly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
}

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
        // Missing: nothing was logged yet. Unreadable: an error, not an empty file that
        // would replace it below.
        let text = match fs::read_to_string(&path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            read => read.with_context(|| format!("cannot read {}", path.display()))?,
        };
        let kept: Vec<(&str, MetricsLine)> = text
            .lines()
            .filter_map(|text| Some((text, serde_json::from_str::<MetricsLine>(text).ok()?)))
            .filter(|(_, line)| line.step <= completed)
            .collect();
        let points = kept.iter().map(|(_, line)| point(line)).collect();
        let kept: Vec<&str> = kept.iter().map(|(text, _)| *text).collect();
        let mut rewritten = kept.join("\n");
        if !rewritten.is_empty() {
            rewritten.push('\n');
        }
        vit::checkpoint::write_atomically(&path, rewritten.as_bytes())
            .with_context(|| format!("cannot rewrite {}", path.display()))?;
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
    pub fn record(&mut self, line: &MetricsLine) -> Result<()> {
        // Both the write and the flush can fail (a full disk); either names the file.
        // The full path: the work folder may be anywhere.
        let cannot = || format!("cannot write {}", self.workdir.join(METRICS_FILE).display());
        writeln!(self.file, "{}", serde_json::to_string(line)?).with_context(cannot)?;
        self.file.flush().with_context(cannot)?;
        self.points.push(point(line));
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
        let path = self.workdir.join("summary.md");
        fs::write(&path, &table).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(table)
    }
}

fn point(line: &MetricsLine) -> MetricPoint {
    MetricPoint {
        step: line.step,
        loss: line.loss,
        test_accuracy: line.test_accuracy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(step: usize, loss: f64, test_accuracy: Option<f64>) -> MetricsLine {
        MetricsLine {
            step,
            loss,
            lr: 0.01,
            grad_norm: 1.5,
            images_per_sec: 10.0,
            test_accuracy,
        }
    }

    #[test]
    fn resuming_drops_the_lines_after_the_checkpoint_and_keeps_the_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut metrics = Metrics::create(dir.path()).expect("create");
        for step in 1..=4 {
            let accuracy = (step % 2 == 0).then(|| step as f64 / 10.0);
            metrics
                .record(&line(step, 1.0 / step as f64, accuracy))
                .expect("record");
        }
        drop(metrics);
        let mut resumed = Metrics::resume(dir.path(), 2).expect("resume");
        resumed.record(&line(3, 0.3, None)).expect("record");
        let text = fs::read_to_string(dir.path().join(METRICS_FILE)).expect("read");
        let lines: Vec<MetricsLine> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("json"))
            .collect();
        assert_eq!(lines[1], line(2, 0.5, Some(0.2)));
        assert!(
            !text
                .lines()
                .next()
                .expect("a line")
                .contains("test_accuracy")
        );
        let steps: Vec<usize> = lines.iter().map(|line| line.step).collect();
        assert_eq!(steps, [1, 2, 3]);
        let table = resumed.write_summary().expect("summary");
        assert!(table.contains("| 2 | 0.5000 | 20.00% |"), "{table}");
        assert!(!table.contains("| 4 |"), "{table}");
        resumed.write_plot().expect("plot");
        assert!(dir.path().join("curves.svg").exists());
    }

    #[test]
    fn errors_name_the_full_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Metrics::create(dir.path()).expect("create");
        // A folder where a file should be: writing it fails.
        let summary = dir.path().join("summary.md");
        fs::create_dir(&summary).expect("folder");
        let error = format!("{:#}", metrics.write_summary().unwrap_err());
        assert!(error.contains(&summary.display().to_string()), "{error}");
        // An unreadable metrics.jsonl is an error naming it, not replaced by an empty one.
        let other = tempfile::tempdir().expect("tempdir");
        let jsonl = other.path().join(METRICS_FILE);
        fs::write(&jsonl, b"\xff\xfe not UTF-8").expect("write");
        let error = format!(
            "{:#}",
            Metrics::resume(other.path(), 1).err().expect("error")
        );
        assert!(error.contains(&jsonl.display().to_string()), "{error}");
        assert_eq!(fs::read(&jsonl).expect("read"), b"\xff\xfe not UTF-8");
    }
}
