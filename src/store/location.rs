//! Where a store lives: a local folder, or a prefix on object storage (`s3://bucket/prefix`)
//! with the options lance's object store is opened with.
//!
//! Owns parsing `--store` / a pipeline's `store:`, the options (a pipeline's `store_options:`
//! map, and plain HTTP allowed for an `http://` endpoint), table URIs
//! (`<prefix>/<table>.lance`), and the few files palpipe keeps beside the tables (checkpoints,
//! shard metadata): read, written, listed and removed through `std::fs` on a local store
//! and through lance's `ObjectStore` on a remote one. Credentials and the endpoint come from
//! the usual `AWS_*` environment variables, which lance reads itself; options given here win.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use lance::io::{ObjectStore, ObjectStoreParams, StorageOptionsAccessor};

use super::{Store, StoreError};

/// A store's place: a folder, or a URI on object storage with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Local(PathBuf),
    Remote(RemoteLocation),
}

/// A store on object storage: `s3://bucket/prefix` (no trailing slash) and the storage
/// options lance gets (`aws_endpoint`, `aws_region`, `allow_http`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteLocation {
    pub uri: String,
    pub options: BTreeMap<String, String>,
}

/// The object-storage schemes palpipe knows: lance's name for each, the cargo feature that
/// builds it, and an example URI (for hints). `gcs://` is read as `gs://`, `azure://` as `az://`.
const SCHEMES: [(&str, &str, &str); 4] = [
    ("s3", "aws", "s3://bucket/prefix"),
    ("gs", "gcp", "gs://bucket/prefix"),
    ("az", "azure", "az://container/prefix"),
    (
        "abfss",
        "azure",
        "abfss://container@account.dfs.core.windows.net/prefix",
    ),
];

/// Whether this binary was built with the cargo feature `feature` (one of [`SCHEMES`]').
fn built(feature: &str) -> bool {
    match feature {
        "aws" => cfg!(feature = "aws"),
        "gcp" => cfg!(feature = "gcp"),
        "azure" => cfg!(feature = "azure"),
        _ => false,
    }
}

/// The schemes this binary can open, as `s3://` words for messages.
fn built_schemes() -> String {
    let names: Vec<String> = SCHEMES
        .iter()
        .filter(|(scheme, feature, _)| built(feature) && *scheme != "abfss")
        .map(|(scheme, _, _)| format!("{scheme}://"))
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

impl StoreLocation {
    /// Reads `--store`'s value: a URI with a scheme is remote (`s3://`, and `gs://`, `az://`
    /// where built), any other text a folder. `options` (a pipeline's `store_options:` and
    /// `--store-option`s) only apply remotely.
    ///
    /// Errors: an unknown scheme, a scheme this binary is built without (naming the cargo
    /// feature), a URI without a bucket.
    pub fn parse(
        text: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<StoreLocation, StoreError> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Ok(StoreLocation::Local(PathBuf::from(text)));
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "gcs" => "gs".to_string(),
            "azure" => "az".to_string(),
            other => other.to_string(),
        };
        if scheme == "file" {
            return Ok(StoreLocation::Local(PathBuf::from(rest)));
        }
        let Some((_, feature, example)) = SCHEMES.iter().find(|(s, _, _)| *s == scheme) else {
            let also = if scheme == "abfs" {
                " (Azure Data Lake: abfss://container@account.dfs.core.windows.net/prefix)"
            } else {
                ""
            };
            return Err(StoreError::Location {
                store: text.into(),
                message: format!(
                    "unknown storage scheme '{scheme}://'{also}\nhint: a store is a folder or a URI this palpipe is built for: {}",
                    built_schemes()
                ),
            });
        };
        if !built(feature) {
            return Err(StoreError::Location {
                store: text.into(),
                message: format!(
                    "'{scheme}://' stores are not built into this palpipe (built: {})\nhint: build palpipe with the cargo feature '{feature}' (make release builds aws, gcp and azure){}",
                    built_schemes(),
                    if built("aws") {
                        ", or copy the store to S3 or an S3-compatible server (MinIO, Ceph, R2) and use s3://bucket/prefix"
                    } else {
                        ""
                    }
                ),
            });
        }
        let rest = rest.trim_end_matches('/');
        // The bucket or container: `abfss://container@account…` names the account after it.
        let bucket = rest.split('/').next().unwrap_or("");
        if bucket.split('@').next().unwrap_or("").is_empty() {
            return Err(StoreError::Location {
                store: text.into(),
                message: format!("no bucket in the URI\nhint: {example}"),
            });
        }
        let mut options = options.clone();
        let endpoint = endpoint(&options);
        let has_allow_http = options
            .keys()
            .any(|k| k.to_ascii_lowercase().contains("allow_http"));
        // A local S3-compatible server (moto, MinIO) speaks plain HTTP.
        if scheme == "s3" && endpoint.is_some_and(|e| e.starts_with("http://")) && !has_allow_http {
            options.insert("allow_http".into(), "true".into());
        }
        Ok(StoreLocation::Remote(RemoteLocation {
            uri: format!("{scheme}://{rest}"),
            options,
        }))
    }

    /// The folder or URI, for messages.
    pub fn display(&self) -> String {
        match self {
            StoreLocation::Local(p) => p.display().to_string(),
            StoreLocation::Remote(r) => r.uri.clone(),
        }
    }

    /// Whether the store is on object storage.
    pub fn is_remote(&self) -> bool {
        matches!(self, StoreLocation::Remote(_))
    }
}

/// The endpoint the options name, else the one `AWS_ENDPOINT_URL` / `AWS_ENDPOINT` name.
fn endpoint(options: &BTreeMap<String, String>) -> Option<String> {
    const KEYS: [&str; 4] = [
        "aws_endpoint",
        "aws_endpoint_url",
        "endpoint",
        "endpoint_url",
    ];
    options
        .iter()
        .find(|(k, _)| KEYS.contains(&k.to_ascii_lowercase().as_str()))
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
        .or_else(|| std::env::var("AWS_ENDPOINT").ok())
        .filter(|e| !e.is_empty())
}

impl RemoteLocation {
    /// The options as lance's object-store parameters.
    pub fn params(&self) -> ObjectStoreParams {
        let map: HashMap<String, String> = self.options.clone().into_iter().collect();
        ObjectStoreParams {
            storage_options_accessor: Some(Arc::new(StorageOptionsAccessor::with_static_options(
                map,
            ))),
            ..Default::default()
        }
    }
}

/// One entry of a store folder: a file (with when it was last written) or a sub-folder.
#[derive(Debug, Clone)]
pub struct StoreEntry {
    pub name: String,
    pub is_dir: bool,
    pub modified: Option<SystemTime>,
}

/// The object store holding a remote store's `rel`, and the object path of `rel` (a macro:
/// the path's type belongs to a crate palpipe does not name).
macro_rules! remote_object {
    ($store:expr, $remote:expr, $rel:expr) => {{
        let uri = format!("{}/{}", $remote.uri, $rel.trim_matches('/'));
        ObjectStore::from_uri_and_params($store.registry.clone(), &uri, &$remote.params())
            .await
            .map_err(|e| io_err(&format!("opening '{uri}'"), e))?
    }};
}

fn io_err(what: &str, source: impl std::fmt::Display) -> StoreError {
    StoreError::Io(std::io::Error::other(format!(
        "{what}: {}",
        super::messages::without_source_locations(&source.to_string())
    )))
}

/// A local file operation's result, with a missing file or folder read as `absent` (`None`,
/// nothing to remove, an empty listing) and any other error described by `what`.
fn or_absent<T>(
    r: std::io::Result<T>,
    absent: impl FnOnce() -> T,
    what: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    match r {
        Ok(v) => Ok(v),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(absent()),
        Err(e) => Err(io_err(&what(), e)),
    }
}

impl Store {
    /// `rel` (a `/`-separated path inside the store) as a folder path or a URI, for messages.
    pub fn describe(&self, rel: &str) -> String {
        match &self.location {
            StoreLocation::Local(root) => root.join(rel).display().to_string(),
            StoreLocation::Remote(r) => format!("{}/{rel}", r.uri),
        }
    }

    /// The bytes of the store's file `rel`, `None` when there is none.
    pub async fn read_file(&self, rel: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.location {
            StoreLocation::Local(root) => or_absent(
                std::fs::read(root.join(rel)).map(Some),
                || None,
                || format!("reading '{}'", self.describe(rel)),
            ),
            StoreLocation::Remote(r) => {
                let (os, path) = remote_object!(self, r, rel);
                let what = || format!("reading '{}'", self.describe(rel));
                if !os.exists(&path).await.map_err(|e| io_err(&what(), e))? {
                    return Ok(None);
                }
                let bytes = os
                    .read_one_all(&path)
                    .await
                    .map_err(|e| io_err(&what(), e))?;
                Ok(Some(bytes.to_vec()))
            }
        }
    }

    /// Writes the store's file `rel` whole: a reader sees the old bytes or the new ones
    /// (a temporary file and a rename locally; one PUT on object storage).
    pub async fn write_file(&self, rel: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let what = || format!("writing '{}'", self.describe(rel));
        match &self.location {
            StoreLocation::Local(root) => {
                let path = root.join(rel);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| io_err(&what(), e))?;
                }
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
                std::fs::write(&tmp, bytes).map_err(|e| io_err(&what(), e))?;
                std::fs::rename(&tmp, &path).map_err(|e| io_err(&what(), e))
            }
            StoreLocation::Remote(r) => {
                let (os, path) = remote_object!(self, r, rel);
                os.put(&path, bytes).await.map_err(|e| io_err(&what(), e))?;
                Ok(())
            }
        }
    }

    /// Creates the store's file `rel` only when there is none: true when this call made it,
    /// false when it existed (an `O_EXCL` create locally, a conditional PUT remotely).
    pub async fn create_file(&self, rel: &str, bytes: &[u8]) -> Result<bool, StoreError> {
        let what = || format!("creating '{}'", self.describe(rel));
        match &self.location {
            StoreLocation::Local(root) => {
                use std::io::Write;
                let path = root.join(rel);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| io_err(&what(), e))?;
                }
                match std::fs::File::options()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                {
                    Ok(mut f) => {
                        f.write_all(bytes).map_err(|e| io_err(&what(), e))?;
                        Ok(true)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(io_err(&what(), e)),
                }
            }
            StoreLocation::Remote(r) => {
                let (os, path) = remote_object!(self, r, rel);
                match os.put_if_absent(&path, bytes.to_vec().into()).await {
                    Ok(()) => Ok(true),
                    // Refused because the object exists, or failed: tell them apart.
                    Err(e) => match os.exists(&path).await {
                        Ok(true) => Ok(false),
                        _ => Err(io_err(&what(), e)),
                    },
                }
            }
        }
    }

    /// Removes the store's file `rel` (nothing when it is absent).
    pub async fn remove_file(&self, rel: &str) -> Result<(), StoreError> {
        let what = || format!("removing '{}'", self.describe(rel));
        match &self.location {
            StoreLocation::Local(root) => {
                or_absent(std::fs::remove_file(root.join(rel)), || (), what)
            }
            StoreLocation::Remote(r) => {
                let (os, path) = remote_object!(self, r, rel);
                if os.exists(&path).await.map_err(|e| io_err(&what(), e))? {
                    os.delete(&path).await.map_err(|e| io_err(&what(), e))?;
                }
                Ok(())
            }
        }
    }

    /// The files and folders directly inside the store's folder `rel` (none when it does
    /// not exist), sorted by name.
    pub async fn list_dir(&self, rel: &str) -> Result<Vec<StoreEntry>, StoreError> {
        let what = || format!("listing '{}'", self.describe(rel));
        let mut out = Vec::new();
        match &self.location {
            StoreLocation::Local(root) => {
                let entries =
                    or_absent(std::fs::read_dir(root.join(rel)).map(Some), || None, what)?;
                for e in entries.into_iter().flatten().flatten() {
                    let meta = e.metadata().ok();
                    out.push(StoreEntry {
                        name: e.file_name().to_string_lossy().into_owned(),
                        is_dir: meta.as_ref().is_some_and(|m| m.is_dir()),
                        modified: meta.and_then(|m| m.modified().ok()),
                    });
                }
            }
            StoreLocation::Remote(r) => {
                let (os, path) = remote_object!(self, r, rel);
                let listed = os
                    .list_with_delimiter(Some(&path))
                    .await
                    .map_err(|e| io_err(&what(), e))?;
                for p in listed.common_prefixes {
                    if let Some(name) = p.filename() {
                        out.push(StoreEntry {
                            name: name.to_string(),
                            is_dir: true,
                            modified: None,
                        });
                    }
                }
                for o in listed.objects {
                    if let Some(name) = o.location.filename() {
                        out.push(StoreEntry {
                            name: name.to_string(),
                            is_dir: false,
                            modified: Some(SystemTime::from(o.last_modified)),
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes the store's folder `rel` and everything in it (nothing when it is absent).
    pub async fn remove_dir(&self, rel: &str) -> Result<(), StoreError> {
        let what = || format!("removing '{}'", self.describe(rel));
        match &self.location {
            StoreLocation::Local(root) => {
                or_absent(std::fs::remove_dir_all(root.join(rel)), || (), what)
            }
            StoreLocation::Remote(r) => {
                let (os, path) = remote_object!(self, r, rel);
                os.remove_dir_all(path)
                    .await
                    .map_err(|e| io_err(&what(), e))
            }
        }
    }

    /// Saves a checkpoint folder as the store's `rel` (replacing one there): `save` writes
    /// the files into a local folder it is given. Locally that folder is a temporary one
    /// beside `rel`, renamed into place; remotely its files are uploaded under `rel/`.
    pub async fn save_dir(
        &self,
        rel: &str,
        save: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        match &self.location {
            StoreLocation::Local(root) => {
                let dir = root.join(rel);
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let tmp = dir.with_file_name(format!(".{name}.tmp"));
                let _ = std::fs::remove_dir_all(&tmp);
                save(&tmp)?;
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::rename(&tmp, &dir)?;
                Ok(())
            }
            StoreLocation::Remote(_) => {
                let tmp = scratch_dir("save")?;
                let result = async {
                    save(&tmp)?;
                    self.remove_dir(rel).await?;
                    for e in std::fs::read_dir(&tmp)?.flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let bytes = std::fs::read(e.path())?;
                        self.write_file(&format!("{rel}/{name}"), &bytes).await?;
                    }
                    anyhow::Ok(())
                }
                .await;
                let _ = std::fs::remove_dir_all(&tmp);
                result
            }
        }
    }

    /// The store's folder `rel` as a local folder to read: itself on a local store, a
    /// fresh download (removed when the returned value is dropped) on a remote one.
    pub async fn local_dir(&self, rel: &str) -> Result<LocalDir, StoreError> {
        match &self.location {
            StoreLocation::Local(root) => Ok(LocalDir {
                path: root.join(rel),
                temporary: false,
            }),
            StoreLocation::Remote(_) => {
                let tmp = scratch_dir("load").map_err(|e| io_err("a scratch folder", e))?;
                let dir = LocalDir {
                    path: tmp,
                    temporary: true,
                };
                for e in self.list_dir(rel).await? {
                    if e.is_dir {
                        continue;
                    }
                    let file = format!("{rel}/{}", e.name);
                    if let Some(bytes) = self.read_file(&file).await? {
                        std::fs::write(dir.path.join(&e.name), bytes).map_err(|err| {
                            io_err(&format!("copying '{}'", self.describe(&file)), err)
                        })?;
                    }
                }
                Ok(dir)
            }
        }
    }
}

/// A local folder holding a store folder's files (see [`Store::local_dir`]).
#[derive(Debug)]
pub struct LocalDir {
    pub path: PathBuf,
    temporary: bool,
}

impl Drop for LocalDir {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A new empty folder under the system's temporary folder.
fn scratch_dir(what: &str) -> std::io::Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "palpipe-{what}-{}-{}-{n}",
        std::process::id(),
        super::now_ms()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<StoreLocation, StoreError> {
        StoreLocation::parse(s, &BTreeMap::new())
    }

    #[test]
    fn folders_and_uris() {
        assert_eq!(
            parse("palstore").unwrap(),
            StoreLocation::Local(PathBuf::from("palstore"))
        );
        assert_eq!(
            parse("file:///tmp/s").unwrap(),
            StoreLocation::Local(PathBuf::from("/tmp/s"))
        );
        let mut opts = BTreeMap::new();
        opts.insert(
            "aws_endpoint".to_string(),
            "http://127.0.0.1:9000".to_string(),
        );
        let StoreLocation::Remote(r) = StoreLocation::parse("s3://b/p/", &opts).unwrap() else {
            panic!("remote expected");
        };
        assert_eq!(r.uri, "s3://b/p");
        assert_eq!(
            r.options.get("allow_http").map(String::as_str),
            Some("true")
        );
        for (uri, scheme, feature, is_built) in [
            ("gs://b/p", "gs", "gcp", cfg!(feature = "gcp")),
            ("gcs://b/p", "gs", "gcp", cfg!(feature = "gcp")),
            ("az://c/p", "az", "azure", cfg!(feature = "azure")),
            (
                "abfss://c@a.dfs.core.windows.net/p",
                "abfss",
                "azure",
                cfg!(feature = "azure"),
            ),
        ] {
            match parse(uri) {
                Ok(StoreLocation::Remote(r)) if is_built => {
                    assert!(r.uri.starts_with(&format!("{scheme}://")), "{}", r.uri)
                }
                Err(e) if !is_built => {
                    let e = e.to_string();
                    assert!(
                        e.contains(&format!("'{scheme}://' stores are not built")),
                        "{e}"
                    );
                    assert!(e.contains(&format!("cargo feature '{feature}'")), "{e}");
                }
                other => panic!("{uri}: {other:?}"),
            }
        }
        assert!(parse("s3:///p").is_err());
        assert!(parse("abfss://@acct.dfs.core.windows.net/p").is_err());
        assert!(parse("ftp://b/p")
            .unwrap_err()
            .to_string()
            .contains("unknown storage scheme 'ftp://'"));
    }
}
