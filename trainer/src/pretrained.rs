//! Resolving `--pretrained`: a local file or folder, `gs://`, `hf:ORG/NAME[@REVISION]`,
//! an https URL, or `none`.
//!
//! `hf:` models come through the `hf-hub` crate into Hugging Face's own cache
//! (`HF_HOME`, by default `~/.cache/huggingface/hub`, shared with Python's
//! `transformers`), with `HF_TOKEN` (or the token `huggingface-cli login` saved) for
//! gated models and `HF_ENDPOINT` for mirrors. A model already in that cache loads
//! without the network.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use vit::checkpoint::{CONFIG_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE, hf::PREPROCESSOR_FILE};
use vit::{Checkpoint, LoadOptions};

use crate::data::download::{self, Expected};

/// The reference's own pretrained weights (ImageNet-21k ViT-B/16).
pub const DEFAULT: &str = "gs://vit_models/imagenet21k/ViT-B_16.npz";

/// Where a `--pretrained` value is fetched from and cached.
#[derive(Debug, PartialEq)]
pub enum Source {
    None,
    Local(PathBuf),
    /// A file to download: (URL, path in the cache).
    Url(String, PathBuf),
    /// A model repository on the Hugging Face Hub, at a branch, tag or commit.
    Hub {
        repo: String,
        revision: String,
    },
}

pub fn resolve(value: &str, cache: &Path) -> Result<Source> {
    if value.eq_ignore_ascii_case("none") {
        return Ok(Source::None);
    }
    if let Some(rest) = value.strip_prefix("gs://") {
        let url = format!("https://storage.googleapis.com/{rest}");
        return Ok(Source::Url(url, cache.join("gs").join(rest)));
    }
    if let Some(name) = value.strip_prefix("hf:") {
        let (repo, revision) = name.split_once('@').unwrap_or((name, "main"));
        let valid = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() != 2 || !parts.iter().all(|part| valid(part)) || revision.is_empty() {
            bail!(
                "`{value}` is not a Hugging Face model name; expected hf:ORG/NAME or \
                 hf:ORG/NAME@REVISION (a branch, tag or commit), e.g. hf:google/vit-base-patch16-224"
            );
        }
        return Ok(Source::Hub {
            repo: repo.to_string(),
            revision: revision.to_string(),
        });
    }
    if value.starts_with("https://") || value.starts_with("http://") {
        let name = value
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("checkpoint");
        return Ok(Source::Url(
            value.to_string(),
            cache.join("urls").join(name),
        ));
    }
    Ok(Source::Local(PathBuf::from(value)))
}

/// How to reach the Hugging Face Hub.
#[derive(Debug, Clone)]
pub struct Hub {
    /// Hugging Face's cache folder (the `hub` folder of `HF_HOME`).
    pub cache: Cache,
    pub endpoint: String,
    pub token: Option<String>,
    /// Show download progress bars.
    pub progress: bool,
}

impl Hub {
    /// As Hugging Face's own tools: `HF_HOME`, `HF_ENDPOINT`, `HF_TOKEN`, else the
    /// token file `huggingface-cli login` writes.
    pub fn from_env() -> Self {
        let cache = Cache::from_env();
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|token| !token.trim().is_empty())
            .or_else(|| cache.token());
        Self {
            endpoint: std::env::var("HF_ENDPOINT")
                .unwrap_or_else(|_| "https://huggingface.co".to_string()),
            cache,
            token,
            progress: true,
        }
    }

    /// The folder (a snapshot in the cache) holding `repo` at `revision`: config.json,
    /// the weights (one file, or the shards its index lists) and, when the repository
    /// has it, preprocessor_config.json. Downloads what the cache lacks.
    pub fn snapshot(&self, repo: &str, revision: &str) -> Result<PathBuf> {
        let name = format!("hf:{repo}@{revision}");
        let id = repo;
        let repo = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
        if let Some(dir) = self.cached(&repo) {
            return Ok(dir);
        }
        let offline = format!(
            "without network, download the model's files elsewhere (e.g. `huggingface-cli download {id}`) \
             and pass their folder as --pretrained"
        );
        let api = ApiBuilder::from_cache(self.cache.clone())
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(self.progress)
            .build()
            .context("cannot set up the Hugging Face client")?;
        let api = api.repo(repo.clone());
        let info = api
            .info()
            .with_context(|| format!("cannot list the files of {name}; {offline}"))?;
        let listed = |file: &str| info.siblings.iter().any(|s| s.rfilename == file);
        let fetch = |file: &str| {
            api.get(file)
                .with_context(|| format!("cannot download {file} of {name}; {offline}"))
        };
        if !listed(CONFIG_FILE) {
            bail!("{name} has no {CONFIG_FILE}: it is not a Hugging Face Transformers model");
        }
        let config = fetch(CONFIG_FILE)?;
        if listed(WEIGHTS_FILE) {
            fetch(WEIGHTS_FILE)?;
        } else if listed(WEIGHTS_INDEX_FILE) {
            let index = std::fs::read(fetch(WEIGHTS_INDEX_FILE)?)
                .with_context(|| format!("cannot read the {WEIGHTS_INDEX_FILE} of {name}"))?;
            for shard in vit::checkpoint::shard_names(&index)? {
                fetch(&shard)?;
            }
        } else {
            bail!(
                "{name} has no {WEIGHTS_FILE} (nor {WEIGHTS_INDEX_FILE}); only safetensors \
                 weights can be loaded, not PyTorch .bin files"
            );
        }
        if listed(PREPROCESSOR_FILE) {
            fetch(PREPROCESSOR_FILE)?;
        }
        Ok(config
            .parent()
            .context("a downloaded file has no folder")?
            .to_path_buf())
    }

    /// The snapshot folder when the cache already holds every file it needs.
    fn cached(&self, repo: &Repo) -> Option<PathBuf> {
        let config = self.cache.repo(repo.clone()).get(CONFIG_FILE)?;
        let dir = config.parent()?.to_path_buf();
        if dir.join(WEIGHTS_FILE).exists() {
            return Some(dir);
        }
        let index = std::fs::read(dir.join(WEIGHTS_INDEX_FILE)).ok()?;
        let shards = vit::checkpoint::shard_names(&index).ok()?;
        shards
            .iter()
            .all(|shard| dir.join(shard).exists())
            .then_some(dir)
    }
}

/// Loads the pretrained checkpoint named by `value`, downloading it once (into
/// `cache`, or Hugging Face's cache for `hf:`).
pub fn load(value: &str, cache: &Path) -> Result<Option<Checkpoint>> {
    load_with(value, cache, &Hub::from_env())
}

/// [`load`] with explicit Hub settings.
pub fn load_with(value: &str, cache: &Path, hub: &Hub) -> Result<Option<Checkpoint>> {
    let path = match resolve(value, cache)? {
        Source::None => return Ok(None),
        Source::Local(path) => path,
        Source::Url(url, dest) => {
            eprintln!("pretrained weights: {url}");
            download::fetch(&url, &dest, &Expected::default(), &mut crate::progress::download())
                .with_context(|| {
                    format!(
                        "cannot download {url}; without network, download it elsewhere and put it at {} \
                         (or pass --pretrained PATH)",
                        dest.display()
                    )
                })?
        }
        Source::Hub { repo, revision } => {
            eprintln!("pretrained weights: hf:{repo}@{revision} (Hugging Face Hub)");
            hub.snapshot(&repo, &revision)?
        }
    };
    let checkpoint = vit::checkpoint::load(&path, &LoadOptions::default())
        .with_context(|| format!("cannot load the pretrained checkpoint {}", path.display()))?;
    Ok(Some(checkpoint))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn sources_map_to_urls_cache_paths_and_hub_revisions() {
        let cache = Path::new("/cache");
        assert_eq!(resolve("none", cache).unwrap(), Source::None);
        assert_eq!(
            resolve(DEFAULT, cache).unwrap(),
            Source::Url(
                "https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz".into(),
                PathBuf::from("/cache/gs/vit_models/imagenet21k/ViT-B_16.npz")
            )
        );
        assert_eq!(
            resolve("hf:google/vit-base-patch16-224-in21k", cache).unwrap(),
            Source::Hub {
                repo: "google/vit-base-patch16-224-in21k".into(),
                revision: "main".into()
            }
        );
        assert_eq!(
            resolve("hf:org/name@v1.0", cache).unwrap(),
            Source::Hub {
                repo: "org/name".into(),
                revision: "v1.0".into()
            }
        );
        for bad in [
            "hf:name",
            "hf:a/b/c",
            "hf:org/na me",
            "hf:org/name@",
            "hf:/name",
        ] {
            let error = resolve(bad, cache).unwrap_err().to_string();
            assert!(error.contains("hf:ORG/NAME"), "{bad}: {error}");
        }
        assert_eq!(
            resolve("weights/b16.npz", cache).unwrap(),
            Source::Local(PathBuf::from("weights/b16.npz"))
        );
    }

    /// A tiny stand-in for the Hub on 127.0.0.1: the file-resolve and model-info
    /// endpoints `hf-hub` uses, with ranges, commit and etag headers, and a token
    /// check for gated repositories.
    struct FakeHub {
        endpoint: String,
        requests: Arc<Mutex<Vec<String>>>,
    }

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    impl FakeHub {
        /// Serves `files` of `repo` at `revision`; with `token`, only to requests bearing it.
        fn start(
            repo: &str,
            revision: &str,
            files: BTreeMap<String, Vec<u8>>,
            token: Option<&str>,
        ) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
            let requests = Arc::new(Mutex::new(Vec::new()));
            let log = requests.clone();
            let (repo, revision) = (repo.to_string(), revision.to_string());
            let token = token.map(|token| format!("Bearer {token}"));
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { break };
                    let served = serve(stream, &repo, &revision, &files, token.as_deref());
                    if let Some(request) = served {
                        log.lock().expect("lock").push(request);
                    }
                }
            });
            Self { endpoint, requests }
        }

        fn hub(&self, cache: &Path, token: Option<&str>) -> Hub {
            Hub {
                cache: Cache::new(cache.to_path_buf()),
                endpoint: self.endpoint.clone(),
                token: token.map(str::to_string),
                progress: false,
            }
        }

        fn requests(&self) -> Vec<String> {
            self.requests.lock().expect("lock").clone()
        }
    }

    /// Answers one request; returns its request line.
    fn serve(
        stream: TcpStream,
        repo: &str,
        revision: &str,
        files: &BTreeMap<String, Vec<u8>>,
        token: Option<&str>,
    ) -> Option<String> {
        let mut reader = BufReader::new(stream.try_clone().ok()?);
        let mut request = String::new();
        reader.read_line(&mut request).ok()?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 || line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut stream = stream;
        let mut respond = |status: &str, extra: &str, body: &[u8]| {
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
        };
        if token.is_some() && header("authorization") != token {
            respond("401 Unauthorized", "", b"gated");
            return Some(request.trim().to_string());
        }
        let info = format!("/api/models/{repo}/revision/{revision}");
        let resolve = format!("/{repo}/resolve/{revision}/");
        if path == info {
            let siblings: Vec<_> = files
                .keys()
                .map(|name| serde_json::json!({ "rfilename": name }))
                .collect();
            let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings }).to_string();
            respond(
                "200 OK",
                "Content-Type: application/json\r\n",
                body.as_bytes(),
            );
        } else if let Some(body) = path.strip_prefix(&resolve).and_then(|name| files.get(name)) {
            let first: usize = header("range")
                .and_then(|range| range.strip_prefix("bytes="))
                .and_then(|range| range.split('-').next())
                .and_then(|first| first.parse().ok())
                .unwrap_or(0);
            let last = header("range")
                .and_then(|range| range.split('-').nth(1))
                .and_then(|last| last.parse::<usize>().ok())
                .unwrap_or(body.len().saturating_sub(1))
                .min(body.len().saturating_sub(1));
            let part = body.get(first..=last).unwrap_or(&[]);
            let etag = format!(
                "{:x}",
                body.len() * 7919 + body.first().copied().unwrap_or(0) as usize
            );
            let extra = format!(
                "X-Repo-Commit: {COMMIT}\r\nETag: \"{etag}\"\r\nContent-Range: bytes {first}-{last}/{}\r\n",
                body.len()
            );
            respond("206 Partial Content", &extra, part);
        } else {
            respond("404 Not Found", "", b"no such file");
        }
        Some(request.trim().to_string())
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/hf_vit_cls")
            .join(name);
        std::fs::read(path).expect("fixture")
    }

    /// The fixture's weights split into two shards with their index.
    fn sharded() -> BTreeMap<String, Vec<u8>> {
        let weights = fixture(WEIGHTS_FILE);
        let tensors = vit::checkpoint::safetensors_io::Tensors::parse(&[&weights]).expect("parse");
        let mut shards = [BTreeMap::new(), BTreeMap::new()];
        let mut weight_map = serde_json::Map::new();
        for (index, name) in tensors.names().enumerate() {
            let shard = index % 2;
            shards[shard].insert(name.to_string(), tensors.get(name).expect("tensor"));
            let file = format!("model-0000{}-of-00002.safetensors", shard + 1);
            weight_map.insert(name.to_string(), serde_json::json!(file));
        }
        let mut files = BTreeMap::new();
        for (shard, tensors) in shards.iter().enumerate() {
            let bytes = vit::checkpoint::safetensors_io::write(tensors, false).expect("write");
            files.insert(
                format!("model-0000{}-of-00002.safetensors", shard + 1),
                bytes,
            );
        }
        let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
        files.insert(
            WEIGHTS_INDEX_FILE.to_string(),
            index.to_string().into_bytes(),
        );
        files
    }

    fn single() -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([
            (CONFIG_FILE.to_string(), fixture(CONFIG_FILE)),
            (WEIGHTS_FILE.to_string(), fixture(WEIGHTS_FILE)),
        ])
    }

    fn params(checkpoint: &Checkpoint) -> Vec<(String, Vec<f32>)> {
        checkpoint
            .params
            .iter()
            .map(|(name, array)| (name.clone(), array.data.clone()))
            .collect()
    }

    #[test]
    fn hub_models_download_once_at_their_revision_then_load_offline() {
        let cache = tempfile::tempdir().expect("cache");
        let server = FakeHub::start("org/vit", "v2", single(), None);
        let hub = server.hub(cache.path(), None);
        let loaded = load_with("hf:org/vit@v2", cache.path(), &hub)
            .expect("download")
            .expect("a checkpoint");
        let local = vit::checkpoint::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf_vit_cls"),
            &LoadOptions::default(),
        )
        .expect("fixture");
        assert_eq!(params(&loaded), params(&local));
        assert_eq!(loaded.labels, local.labels);
        let requests = server.requests();
        assert!(
            requests
                .iter()
                .any(|r| r.contains("/org/vit/resolve/v2/model.safetensors")),
            "{requests:?}"
        );
        // A second load needs no network at all: the cache has everything.
        let unreachable = Hub {
            endpoint: "http://127.0.0.1:9".into(),
            ..hub
        };
        let again = load_with("hf:org/vit@v2", cache.path(), &unreachable)
            .expect("from the cache")
            .expect("a checkpoint");
        assert_eq!(params(&again), params(&local));
    }

    #[test]
    fn sharded_hub_weights_and_preprocessor_configs_are_read() {
        let cache = tempfile::tempdir().expect("cache");
        let mut files = sharded();
        files.insert(CONFIG_FILE.to_string(), fixture(CONFIG_FILE));
        let preprocessor = serde_json::json!({
            "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225],
        });
        files.insert(
            PREPROCESSOR_FILE.to_string(),
            preprocessor.to_string().into_bytes(),
        );
        let server = FakeHub::start("org/big", "main", files, None);
        let loaded = load_with("hf:org/big", cache.path(), &server.hub(cache.path(), None))
            .expect("download")
            .expect("a checkpoint");
        let whole = vit::checkpoint::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf_vit_cls"),
            &LoadOptions::default(),
        )
        .expect("fixture");
        assert_eq!(params(&loaded), params(&whole));
        assert_eq!(
            loaded.config.normalization,
            vit::preprocess::Normalization::IMAGENET
        );
    }

    #[test]
    fn gated_models_need_the_token_and_missing_models_say_what_to_do() {
        let cache = tempfile::tempdir().expect("cache");
        let server = FakeHub::start("org/gated", "main", single(), Some("secret"));
        let without = load_with(
            "hf:org/gated",
            cache.path(),
            &server.hub(cache.path(), None),
        )
        .expect_err("no token");
        let message = format!("{without:#}");
        assert!(
            message.contains("hf:org/gated@main") && message.contains("--pretrained"),
            "{message}"
        );
        let with = load_with(
            "hf:org/gated",
            cache.path(),
            &server.hub(cache.path(), Some("secret")),
        )
        .expect("with the token");
        assert!(with.is_some());

        let empty = FakeHub::start("org/empty", "main", BTreeMap::new(), None);
        let error = load_with("hf:org/empty", cache.path(), &empty.hub(cache.path(), None))
            .expect_err("no files");
        assert!(format!("{error:#}").contains("config.json"), "{error:#}");
    }
}
