//! Hostile files and faults, as a user would meet them: each ends in one line starting
//! with `error:` and exit status 1, in bounded memory, with no non-finite model saved
//! and no user file replaced.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn trainer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
}

/// What a finished command left: its exit code, stderr, and its peak resident memory.
struct Outcome {
    code: Option<i32>,
    stderr: String,
    peak_mb: f64,
}

/// Runs `command` to its end and measures its own peak memory (`wait4`'s `ru_maxrss`),
/// whatever other tests run meanwhile.
// The child is reaped by `wait4`, which std's `Child::wait` cannot replace here.
#[allow(clippy::zombie_processes)]
fn run(command: &mut Command) -> Outcome {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: `pid` is our child, not yet waited for; the pointers are valid.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4");
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Outcome {
        code,
        stderr: reader.join().expect("stderr reader"),
        // ru_maxrss is in kilobytes on Linux.
        peak_mb: usage.ru_maxrss as f64 / 1024.0,
    }
}

/// Exit 1 and exactly one line on stderr, `error: ...` holding every `words`.
fn assert_one_line_error(outcome: &Outcome, words: &[&str]) {
    assert_eq!(outcome.code, Some(1), "{}", outcome.stderr);
    let last = outcome.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{}", outcome.stderr);
    assert_eq!(
        outcome
            .stderr
            .lines()
            .filter(|line| line.contains("error"))
            .count(),
        1,
        "{}",
        outcome.stderr
    );
    for word in words {
        assert!(last.contains(word), "`{word}` not in: {last}");
    }
}

/// A two-class image folder, one test PNG per class.
fn tiny_data(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    for split in ["train", "test"] {
        for (class, image) in [("a", "hf_vit_imagenet.png"), ("b", "preprocess_image.png")] {
            let folder = data.join(split).join(class);
            std::fs::create_dir_all(&folder).expect("folder");
            std::fs::copy(fixture(image), folder.join("0.png")).expect("copy");
        }
    }
    data
}

/// A tiny fine-tuning run with `extra` options (which replace the defaults they name).
fn train(data: &Path, workdir: &Path, extra: &[&str]) -> Command {
    let mut command = trainer();
    command
        .arg("--pretrained")
        .arg(fixture("google_token.npz"))
        .arg("--dataset")
        .arg(data)
        .arg("--workdir")
        .arg(workdir)
        .args(extra);
    for (option, value) in [
        ("--resolution", "32"),
        ("--batch", "2"),
        ("--accum-steps", "1"),
    ] {
        if !extra.contains(&option) {
            command.args([option, value]);
        }
    }
    command
}

#[test]
fn absurd_sizes_are_errors_naming_the_limit_not_aborts() {
    let image = fixture("hf_vit_imagenet.png");
    let outcome = run(trainer()
        .args(["predict", "--image-size", "100000", "--checkpoint"])
        .arg(fixture("google_token.npz"))
        .arg(&image));
    assert_one_line_error(&outcome, &["image_size 100000", "limit of 4096"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = tiny_data(dir.path());
    let outcome = run(&mut train(
        &data,
        &dir.path().join("run"),
        &["--resolution", "100000"],
    ));
    assert_one_line_error(&outcome, &["--resolution", "4096"]);
}

#[test]
fn small_files_claiming_huge_models_cost_little() {
    // What the program costs before it reads anything (libtorch's libraries alone take
    // hundreds of MB in builds with the `tch` feature).
    let baseline = run(trainer().arg("--version")).peak_mb;
    let dir = tempfile::tempdir().expect("tempdir");
    // A Hugging Face config claiming a million layers beside small weights.
    let folder = dir.path().join("hf");
    std::fs::create_dir_all(&folder).expect("folder");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("hf_vit_cls/config.json")).expect("read"))
            .expect("json");
    config["num_hidden_layers"] = serde_json::json!(1_000_000);
    std::fs::write(folder.join("config.json"), config.to_string()).expect("write");
    std::fs::copy(
        fixture("hf_vit_cls/model.safetensors"),
        folder.join("model.safetensors"),
    )
    .expect("copy");
    let outcome = run(trainer()
        .args(["predict", "--checkpoint"])
        .arg(&folder)
        .arg(fixture("hf_vit_imagenet.png")));
    assert_one_line_error(&outcome, &["num_layers 1000000", "limit"]);
    eprintln!(
        "a million layers claimed: peak {:.0} MB ({baseline:.0} MB for --version)",
        outcome.peak_mb
    );
    assert!(outcome.peak_mb < baseline + 100.0, "{} MB", outcome.peak_mb);

    // 1000 layers, under the limit of 1024, beside the weights of 2: refused once the
    // weights are found missing, quickly and without building the claimed model's
    // activations.
    config["num_hidden_layers"] = serde_json::json!(1000);
    std::fs::write(folder.join("config.json"), config.to_string()).expect("write");
    let started = std::time::Instant::now();
    let outcome = run(trainer()
        .args(["predict", "--checkpoint"])
        .arg(&folder)
        .arg(fixture("hf_vit_imagenet.png")));
    let seconds = started.elapsed().as_secs_f64();
    assert_one_line_error(&outcome, &[&folder.display().to_string()]);
    eprintln!(
        "1000 layers claimed: peak {:.0} MB ({baseline:.0} MB for --version), {seconds:.1} s",
        outcome.peak_mb
    );
    assert!(outcome.peak_mb < baseline + 100.0, "{} MB", outcome.peak_mb);
    assert!(seconds < 10.0, "{seconds:.1} s");

    // A small .npz whose extra entry inflates to 512 MB: only the arrays of the model it
    // describes are read, so the bomb is never inflated.
    let bomb = dir.path().join("bomb.npz");
    let source = std::fs::read(fixture("google_token.npz")).expect("read");
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(source)).expect("zip");
    let mut writer = zip::ZipWriter::new(std::fs::File::create(&bomb).expect("create"));
    let deflated = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for index in 0..archive.len() {
        writer
            .raw_copy_file(archive.by_index(index).expect("entry"))
            .expect("copy entry");
    }
    writer.start_file("zeros.npy", deflated).expect("entry");
    let count = 128 * 1024 * 1024;
    let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({count},), }}");
    // Magic, version and length take 10 bytes; NumPy pads the header to 64-byte alignment.
    let padded = format!("{header:<117}\n");
    writer.write_all(b"\x93NUMPY\x01\x00").expect("magic");
    writer
        .write_all(&(padded.len() as u16).to_le_bytes())
        .expect("length");
    writer.write_all(padded.as_bytes()).expect("header");
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..count * 4 / chunk.len() {
        writer.write_all(&chunk).expect("zeros");
    }
    writer.finish().expect("finish");
    let size_mb = std::fs::metadata(&bomb).expect("size").len() as f64 / 1e6;
    assert!(size_mb < 3.0, "{size_mb} MB");
    let outcome = run(trainer()
        .args(["predict", "--json", "--checkpoint"])
        .arg(&bomb)
        .arg(fixture("hf_vit_imagenet.png")));
    // The model loads (the extra entry is reported, not read), in bounded memory.
    assert_eq!(outcome.code, Some(0), "{}", outcome.stderr);
    assert!(
        outcome.stderr.contains("unused entries"),
        "{}",
        outcome.stderr
    );
    eprintln!(
        "{size_mb:.1} MB npz inflating to 512 MB: peak {:.0} MB ({baseline:.0} MB for --version)",
        outcome.peak_mb
    );
    assert!(outcome.peak_mb < baseline + 150.0, "{} MB", outcome.peak_mb);
}

#[test]
fn meaningless_options_and_non_finite_updates_leave_no_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = tiny_data(dir.path());
    for (options, words) in [
        (&["--momentum", "nan"][..], &["--momentum", "NaN"][..]),
        (&["--lr", "1e39"], &["--lr"]),
        (&["--lr=-0.1"], &["--lr", "-0.1"]),
        (&["--grad-clip", "inf"], &["--grad-clip"]),
        (&["--accum-steps", "0"], &["--accum-steps 0"]),
    ] {
        let workdir = dir.path().join(format!("run{}", options.join("")));
        let outcome = run(&mut train(&data, &workdir, options));
        assert_one_line_error(&outcome, words);
        assert!(!workdir.join("export").exists());
    }
    // A rate that makes the last (and only) update overflow float32 (one image per
    // update, so that some head gradients exceed 1), while its loss was finite.
    let workdir = dir.path().join("overflow");
    let outcome = run(&mut train(
        &data,
        &workdir,
        &[
            "--steps",
            "1",
            "--warmup",
            "0",
            "--lr",
            "3.4e38",
            "--grad-clip",
            "0",
            "--batch",
            "1",
        ],
    ));
    assert_one_line_error(&outcome, &["step 1", "infinite or NaN"]);
    assert!(!workdir.join("export").exists() && !workdir.join("checkpoint").exists());
}

#[test]
fn non_finite_weights_are_refused_when_loaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = dir.path().join("nan");
    std::fs::create_dir_all(&folder).expect("folder");
    std::fs::copy(
        fixture("hf_vit_cls/config.json"),
        folder.join("config.json"),
    )
    .expect("copy");
    let weights = std::fs::read(fixture("hf_vit_cls/model.safetensors")).expect("read");
    let tensors = vit::checkpoint::safetensors_io::Tensors::parse(&[&weights]).expect("parse");
    let mut arrays: std::collections::BTreeMap<_, _> = tensors
        .names()
        .map(|name| (name.to_string(), tensors.get(name).expect("tensor")))
        .collect();
    arrays.get_mut("classifier.bias").expect("bias").data[2] = f32::NAN;
    let broken = vit::checkpoint::safetensors_io::write(&arrays, false).expect("write");
    std::fs::write(folder.join("model.safetensors"), broken).expect("write");
    for command in ["predict", "export"] {
        let mut invocation = trainer();
        invocation.args([command, "--checkpoint"]).arg(&folder);
        if command == "predict" {
            invocation.arg(fixture("hf_vit_imagenet.png"));
        } else {
            invocation.arg("--out").arg(dir.path().join("out"));
        }
        let outcome = run(&mut invocation);
        assert_one_line_error(&outcome, &["head/bias", "not a finite number"]);
    }
}

#[test]
fn user_files_are_replaced_only_with_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("mine");
    std::fs::create_dir_all(&out).expect("folder");
    std::fs::write(out.join("config.json"), "my own file").expect("write");
    let export = |extra: &[&str]| {
        run(trainer()
            .args(["export", "--checkpoint"])
            .arg(fixture("google_token.npz"))
            .arg("--out")
            .arg(&out)
            .args(extra))
    };
    let outcome = export(&["--f16"]);
    assert_one_line_error(&outcome, &["already holds config.json", "--force"]);
    assert_eq!(
        std::fs::read_to_string(out.join("config.json")).expect("read"),
        "my own file"
    );
    let outcome = export(&["--force"]);
    assert_eq!(outcome.code, Some(0), "{}", outcome.stderr);
    assert!(out.join("model.safetensors").exists());

    // Converting that float32 export to float16 in place (--checkpoint and --out the
    // same folder) replaces it: refused without --force, done with it.
    let in_place = |extra: &[&str]| {
        run(trainer()
            .args(["export", "--f16", "--checkpoint"])
            .arg(&out)
            .arg("--out")
            .arg(&out)
            .args(extra))
    };
    let float32 = std::fs::read(out.join("model.safetensors")).expect("read");
    let outcome = in_place(&[]);
    assert_one_line_error(&outcome, &["already holds config.json", "--force"]);
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).expect("read"),
        float32
    );
    let outcome = in_place(&["--force"]);
    assert_eq!(outcome.code, Some(0), "{}", outcome.stderr);
    let float16 = std::fs::metadata(out.join("model.safetensors"))
        .expect("size")
        .len();
    assert!(float16 < float32.len() as u64 * 3 / 4, "{float16} bytes");
    // And it is a model that loads.
    let outcome = run(trainer()
        .args(["predict", "--checkpoint"])
        .arg(&out)
        .arg(fixture("hf_vit_imagenet.png")));
    assert_eq!(outcome.code, Some(0), "{}", outcome.stderr);

    // eval writes its report beside the model, and replaces an earlier one only with --force.
    let data = tiny_data(dir.path());
    // Refused before anything is evaluated.
    std::fs::write(out.join("eval.json"), "{}").expect("write");
    let outcome = run(trainer()
        .args(["eval", "--checkpoint"])
        .arg(&out)
        .arg("--dataset")
        .arg(&data));
    assert_one_line_error(&outcome, &["already holds eval.json", "--force"]);
    assert_eq!(
        std::fs::read_to_string(out.join("eval.json")).expect("read"),
        "{}"
    );
}

#[test]
fn a_warmup_longer_than_the_run_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = tiny_data(dir.path());
    let workdir = dir.path().join("run");
    let outcome = run(&mut train(
        &data,
        &workdir,
        &["--steps", "3", "--warmup", "4"],
    ));
    assert_one_line_error(&outcome, &["--warmup 4", "--steps 3"]);
    assert!(!workdir.exists());
    // Resuming checks the saved recipe as a new run's (a state.json written before the
    // check existed, or edited): refused, saying that the recipe cannot change.
    let outcome = run(&mut train(
        &data,
        &workdir,
        &["--steps", "2", "--warmup", "1", "--stop-after", "1"],
    ));
    assert_eq!(outcome.code, Some(0), "{}", outcome.stderr);
    let state = workdir.join("checkpoint/state.json");
    let mut saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).expect("read")).expect("json");
    saved["args"]["warmup"] = serde_json::json!(5);
    std::fs::write(&state, saved.to_string()).expect("write");
    let outcome = run(trainer().arg("--resume").arg("--workdir").arg(&workdir));
    assert_one_line_error(
        &outcome,
        &["cannot be resumed", "--warmup 5", "--steps 2", "new run"],
    );
}

#[test]
fn a_new_run_replaces_files_in_its_workdir_only_with_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = tiny_data(dir.path());
    for file in ["config.json", "metrics.jsonl"] {
        let workdir = dir.path().join(file.replace('.', "_"));
        std::fs::create_dir_all(&workdir).expect("folder");
        std::fs::write(workdir.join(file), "my own file").expect("write");
        // The tiniest run (warm-up as long as the run is legal).
        let tiny = ["--steps", "1", "--warmup", "1"];
        let outcome = run(&mut train(&data, &workdir, &tiny));
        let folder = workdir.display().to_string();
        assert_one_line_error(&outcome, &[&folder, file, "--force", "--workdir"]);
        assert_eq!(
            std::fs::read_to_string(workdir.join(file)).expect("read"),
            "my own file"
        );
        let outcome = run(train(&data, &workdir, &tiny).arg("--force"));
        assert_eq!(outcome.code, Some(0), "{}", outcome.stderr);
        assert_ne!(
            std::fs::read_to_string(workdir.join(file)).expect("read"),
            "my own file"
        );
        assert!(workdir.join("export/model.safetensors").exists());
        // A run that can be resumed is not replaced, even with --force.
        let outcome = run(train(&data, &workdir, &tiny).arg("--force"));
        assert_one_line_error(&outcome, &[&folder, "--resume"]);
    }
}

#[test]
fn work_directory_errors_name_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = tiny_data(dir.path());
    let file = dir.path().join("a_file");
    std::fs::write(&file, "not a folder").expect("write");
    let outcome = run(&mut train(&data, &file, &["--steps", "1", "--warmup", "1"]));
    assert_one_line_error(
        &outcome,
        &[&file.display().to_string(), "not a folder", "--workdir"],
    );
    let outcome = run(trainer().arg("--resume").arg("--workdir").arg(&file));
    assert_one_line_error(&outcome, &[&file.display().to_string(), "no checkpoint"]);
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        "not a folder"
    );
}

/// Bytes that the files under `path` take on a tmpfs (whole 4 KiB pages).
fn tmpfs_bytes(path: &Path) -> u64 {
    if path.is_dir() {
        let entries = std::fs::read_dir(path).expect("list");
        entries
            .map(|entry| tmpfs_bytes(&entry.expect("entry").path()))
            .sum()
    } else {
        std::fs::metadata(path).expect("size").len().div_ceil(4096) * 4096
    }
}

/// The command line of `command`, for `sh -c`.
fn shell_line(command: &Command) -> String {
    let mut line = format!("{:?}", command.get_program());
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&format!("{arg:?}"));
    }
    line
}

/// A full disk: the workdir is a tmpfs in a private mount namespace (root, or an
/// unprivileged user namespace, which this test needs) with room for a checkpoint and a
/// half, so that the second checkpoint fails; on a larger disk, --resume then continues.
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_is_named_and_leaves_no_partial_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = tiny_data(dir.path());
    let options = ["--steps", "3", "--warmup", "1", "--checkpoint-every", "1"];
    // How much a checkpoint and the rest of a run take, measured on the real disk.
    let measured = dir.path().join("measured");
    let outcome = run(&mut train(&data, &measured, &options));
    assert_eq!(outcome.code, Some(0), "{}", outcome.stderr);
    let checkpoint = tmpfs_bytes(&measured.join("checkpoint"));
    let others = tmpfs_bytes(&measured) - checkpoint - tmpfs_bytes(&measured.join("export"));
    let size = others + checkpoint * 3 / 2;

    let mount = dir.path().join("small");
    std::fs::create_dir_all(&mount).expect("folder");
    let workdir = mount.join("run");
    let train_line = shell_line(&train(&data, &workdir, &options));
    let mut resume = trainer();
    resume.arg("--resume").arg("--workdir").arg(&workdir);
    let resume_line = shell_line(&resume);
    let [train_err, listing, resume_err] =
        ["train.err", "listing", "resume.err"].map(|name| dir.path().join(name));
    let root = unsafe { libc::geteuid() } == 0;
    let namespace: &[&str] = if root { &["-m"] } else { &["-r", "-m"] };
    let script = format!(
        "mount -t tmpfs -o size={size} tmpfs {mount:?} || exit 99
         {train_line} >/dev/null 2>{train_err:?}; code=$?; ls -a {workdir:?} >{listing:?}
         mount -o remount,size=64m {mount:?} || exit 99
         {resume_line} >/dev/null 2>{resume_err:?}; resumed=$?
         ls {workdir:?}/export; exit $((code * 10 + resumed))"
    );
    let output = Command::new("unshare")
        .args(namespace)
        .args(["sh", "-c", &script])
        .output()
        .expect("unshare runs (util-linux)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("mount:") && !stderr.contains("unshare:"),
        "this test needs root or unprivileged user namespaces: {stderr}"
    );
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let status = output.status.code().expect("an exit status");
    let failed = Outcome {
        code: Some(status / 10),
        stderr: read(&train_err),
        peak_mb: 0.0,
    };
    let path = workdir.display().to_string();
    assert_one_line_error(
        &failed,
        &["the disk is full", "checkpoint", &path, "--resume"],
    );
    // The first checkpoint is kept, and nothing half-written is left beside it.
    let listing = read(&listing);
    assert!(
        listing.lines().any(|name| name == "checkpoint"),
        "{listing}"
    );
    assert!(
        !listing.contains("checkpoint.partial") && !listing.contains("checkpoint.previous"),
        "{listing}"
    );
    // With space again, the run continues from that checkpoint and finishes.
    let resumed = read(&resume_err);
    assert_eq!(status % 10, 0, "{resumed}");
    assert!(
        resumed.contains("resuming from the checkpoint at step 1"),
        "{resumed}"
    );
    let exported = String::from_utf8_lossy(&output.stdout);
    assert!(exported.contains("model.safetensors"), "{exported}");
}

#[test]
fn bad_files_give_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A truncated JPEG: the decoder's multi-line message becomes one line.
    let jpeg = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/cifar10-sample/test/cat/0000.jpg"),
    )
    .expect("read");
    let truncated = dir.path().join("cut.jpg");
    std::fs::write(&truncated, &jpeg[..600]).expect("write");
    let outcome = run(trainer()
        .args(["predict", "--checkpoint"])
        .arg(fixture("google_token.npz"))
        .arg(&truncated));
    assert_one_line_error(&outcome, &["cut.jpg", "JPEG"]);
    // A missing file: the OS message once.
    let outcome = run(trainer().args(["predict", "--checkpoint", "/no/such.npz", "x.png"]));
    assert_one_line_error(&outcome, &["/no/such.npz"]);
    assert_eq!(
        outcome.stderr.matches("No such file").count(),
        1,
        "{}",
        outcome.stderr
    );
    // config.json fields of the wrong kind are refused, not defaulted.
    for (field, value, words) in [
        (
            "layer_norm_eps",
            serde_json::json!("x"),
            &["layer_norm_eps"][..],
        ),
        (
            "id2label",
            serde_json::json!({"0": "only one"}),
            &["id2label", "1 classes", "6"][..],
        ),
    ] {
        let folder = dir.path().join(field);
        std::fs::create_dir_all(&folder).expect("folder");
        let mut config: serde_json::Value = serde_json::from_slice(
            &std::fs::read(fixture("hf_vit_cls/config.json")).expect("read"),
        )
        .expect("json");
        config[field] = value;
        std::fs::write(folder.join("config.json"), config.to_string()).expect("write");
        std::fs::copy(
            fixture("hf_vit_cls/model.safetensors"),
            folder.join("model.safetensors"),
        )
        .expect("copy");
        let outcome = run(trainer()
            .args(["predict", "--checkpoint"])
            .arg(&folder)
            .arg(fixture("hf_vit_imagenet.png")));
        assert_one_line_error(&outcome, words);
    }
}
