//! Helpers shared by the CLI tests: run the real binary on a temp store.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary under test: `$PALPIPE_TEST_BIN` when set (worktrees that share one
/// CARGO_TARGET_DIR overwrite each other's `target/debug/palpipe`; point this at your own
/// `target/debug/deps/palpipe-<hash>`), else the one cargo built for this test.
/// When this test process has started a moto server ([`s3_store`]), the command also gets
/// the environment that points palpipe at it.
pub fn bin() -> Command {
    let mut c = match std::env::var_os("PALPIPE_TEST_BIN").filter(|v| !v.is_empty()) {
        Some(b) => Command::new(b),
        None => Command::new(env!("CARGO_BIN_EXE_palpipe")),
    };
    if let Some(Some(m)) = MOTO.get() {
        c.envs(m.env());
    }
    c
}

/// The moto S3 server of this test process, started by the first [`s3_store`] (`None`
/// inside: tests skipped by `PALPIPE_NO_S3_TESTS=1`).
static MOTO: std::sync::OnceLock<Option<MotoServer>> = std::sync::OnceLock::new();

/// A moto S3 server (`moto[server]` from PyPI) on a free 127.0.0.1 port, in a Python child
/// that stops it when its stdin closes: when the handle is dropped, or when the test process
/// ends in any way (a static is never dropped, so the pipe's end is the backstop).
pub struct MotoServer {
    child: std::process::Child,
    pub port: u16,
}

/// The Python that starts moto: port 0 lets the OS pick a free one, printed on stdout.
const MOTO_MAIN: &str = "import sys
from moto.server import ThreadedMotoServer
s = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
s.start()
print(s.get_host_and_port()[1], flush=True)
sys.stdin.read()
s.stop()
";

impl MotoServer {
    /// The Python of the moto venv: `$PALPIPE_MOTO_PYTHON`, else the one `make setup`
    /// installs (`~/.cache/palpipe/venv-moto`).
    pub fn python() -> PathBuf {
        match std::env::var_os("PALPIPE_MOTO_PYTHON").filter(|v| !v.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/palpipe/venv-moto/bin/python"),
        }
    }

    /// Starts moto, or `None` when `PALPIPE_NO_S3_TESTS=1`. Panics with a hint when moto is
    /// not installed: the S3 tests never skip silently.
    pub fn start() -> Option<MotoServer> {
        use std::io::BufRead;
        if std::env::var("PALPIPE_NO_S3_TESTS").as_deref() == Ok("1") {
            eprintln!("skipped: PALPIPE_NO_S3_TESTS=1");
            return None;
        }
        let python = Self::python();
        let has_moto = Command::new(&python)
            .args(["-c", "import moto.server, flask"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            has_moto,
            "moto[server] is not installed for {} \nhint: run 'make setup' (or set \
             PALPIPE_MOTO_PYTHON to a Python with moto[server]; PALPIPE_NO_S3_TESTS=1 skips these tests)",
            python.display()
        );
        let log = std::env::temp_dir().join(format!("palpipe-moto-{}.log", std::process::id()));
        let mut child = Command::new(&python)
            .args(["-c", MOTO_MAIN])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("moto log file"))
            .spawn()
            .expect("start moto");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("moto stdout"))
            .read_line(&mut line)
            .expect("read moto's port");
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "moto did not print its port (got {line:?}); its log: {}",
                log.display()
            )
        });
        Some(MotoServer { child, port })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What palpipe needs to reach the server: its endpoint, moto's keys, a region, few and
    /// short retries (so a broken request fails a test quickly). No `AWS_ALLOW_HTTP`:
    /// palpipe allows plain HTTP itself for an `http://` endpoint.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("OBJECT_STORE_CLIENT_MAX_RETRIES", "3".into()),
            ("OBJECT_STORE_CLIENT_RETRY_TIMEOUT", "30".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Creates bucket `name` (an unsigned `PUT /name`: moto does not check signatures).
    pub fn create_bucket(&self, name: &str) {
        let (head, body) = self.exchange(&format!("PUT /{name}"), "Content-Length: 0\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
            "creating bucket {name}: {head}\n{}",
            String::from_utf8_lossy(&body)
        );
    }

    /// The keys under `prefix` in `bucket` (an unsigned ListObjectsV2), sorted.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (head, body) = self.exchange(&format!("GET /{bucket}?list-type=2&prefix={prefix}"), "");
        let reply = String::from_utf8_lossy(&body);
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "listing {bucket}: {head}\n{reply}"
        );
        assert!(
            !reply.contains("<IsTruncated>true</IsTruncated>"),
            "more than one page of keys under {prefix}"
        );
        let mut keys: Vec<String> = reply
            .split("<Key>")
            .skip(1)
            .filter_map(|part| part.split("</Key>").next())
            .map(str::to_string)
            .collect();
        keys.sort();
        keys
    }

    /// The bytes of `key` in `bucket` (a GetObject with a dummy signature: moto refuses an
    /// anonymous read of a private object, and does not check signatures).
    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let (head, body) = self.exchange(
            &format!("GET /{bucket}/{key}"),
            "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0\r\nx-amz-date: 20260101T000000Z\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\n",
        );
        let head = head.to_ascii_lowercase();
        assert!(
            head.starts_with("http/1.1 200"),
            "getting {bucket}/{key}: {head}"
        );
        assert!(!head.contains("transfer-encoding: chunked"), "{head}");
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        assert_eq!(
            length,
            Some(body.len()),
            "getting {bucket}/{key}: a whole body"
        );
        body
    }

    /// One HTTP/1.1 request to the server, closed after the reply: `request` is the first
    /// line's method and target, `headers` more header lines (each ending in CRLF). Returns
    /// the reply's status line and headers, and its body.
    fn exchange(&self, request: &str, headers: &str) -> (String, Vec<u8>) {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("reach moto");
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        write!(
            tcp,
            "{request} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{headers}Connection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut reply = Vec::new();
        let _ = tcp.read_to_end(&mut reply);
        let split = reply
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(reply.len());
        let head = String::from_utf8_lossy(&reply[..split]).into_owned();
        let body = reply.get(split + 4..).unwrap_or_default().to_vec();
        (head, body)
    }
}

/// Whether anything is stored at `store`: the folder exists, or (an `s3://` store) an
/// object is under its prefix.
pub fn store_exists(store: &Path) -> bool {
    match s3_parts(store) {
        Some(_) => !store_keys(store, "").is_empty(),
        None => store.exists(),
    }
}

/// The bucket and prefix of an `s3://bucket/prefix` store; `None` for a folder store.
fn s3_parts(store: &Path) -> Option<(&str, &str)> {
    let uri = store.to_str()?.strip_prefix("s3://")?;
    Some(
        uri.split_once('/')
            .expect("an s3:// test store has a prefix"),
    )
}

/// The folder `rel` of `store` as a local folder: the store's own for a folder store; for
/// an `s3://` store, a copy of every object under it, made under `into`.
pub fn local_copy(store: &Path, rel: &str, into: &Path) -> PathBuf {
    let Some((bucket, prefix)) = s3_parts(store) else {
        return store.join(rel);
    };
    let local = into.join(format!("copy-{}", rel.replace('/', "-")));
    for key in store_keys(store, &format!("{}/", rel.trim_end_matches('/'))) {
        let file = local.join(&key[rel.trim_end_matches('/').len() + 1..]);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, moto().get(bucket, &format!("{prefix}/{key}"))).unwrap();
    }
    local
}

/// This process's moto server (after a [`s3_store`]).
pub fn moto() -> &'static MotoServer {
    MOTO.get()
        .and_then(Option::as_ref)
        .expect("s3_store() starts moto first")
}

/// The keys of an `s3://bucket/prefix` store under its `rel` (relative to the store),
/// each relative to the store.
pub fn store_keys(store: &Path, rel: &str) -> Vec<String> {
    let (bucket, prefix) = s3_parts(store).expect("an s3:// store");
    moto()
        .keys(bucket, &format!("{prefix}/{rel}"))
        .into_iter()
        .map(|k| k[prefix.len() + 1..].to_string())
        .collect()
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new store for a test: the folder `dir/name`, or, with `PALPIPE_TEST_STORE=s3`, a fresh
/// prefix on a moto server (the same test then runs against S3; see tests/s3_cli.rs).
pub fn new_store(dir: &Path, name: &str) -> PathBuf {
    match std::env::var("PALPIPE_TEST_STORE").as_deref() {
        Ok("s3") => s3_store(name).unwrap_or_else(|| dir.join(name)),
        Ok("") | Err(_) => dir.join(name),
        Ok(other) => panic!("PALPIPE_TEST_STORE={other}: expected s3 (or unset for a folder)"),
    }
}

/// Whether this is the S3 pass (`PALPIPE_TEST_STORE=s3`) and the calling test checks what only
/// a store in a folder has (its files read with `std::fs`, the writer lock, roll-back): then
/// it prints that it is skipped, and why, and the test returns. The tests that call it are
/// listed in README.md ("Tests on S3").
pub fn local_only(test: &str, why: &str) -> bool {
    let s3 = std::env::var("PALPIPE_TEST_STORE").as_deref() == Ok("s3");
    if s3 {
        eprintln!("skipped on s3: {test}: {why}");
    }
    s3
}

/// A fresh, empty store on this process's moto server (`s3://<bucket>/store`, one bucket
/// per call), or `None` when the S3 tests are skipped (`PALPIPE_NO_S3_TESTS=1`). Every
/// command from [`bin`] (and so [`palpipe`], [`query`], …) then reaches moto.
pub fn s3_store(name: &str) -> Option<PathBuf> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let moto = MOTO.get_or_init(MotoServer::start).as_ref()?;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    // Bucket names: 3-63 characters, lowercase letters, digits and hyphens.
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let bucket = format!("pp-{clean}-{n}");
    moto.create_bucket(&bucket);
    Some(PathBuf::from(format!("s3://{bucket}/store")))
}

pub fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
    pub fn code(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

fn done(o: Output) -> Run {
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Runs `palpipe ARGS --store STORE --quiet`.
pub fn palpipe(store: &Path, args: &[&str]) -> Run {
    palpipe_with_env(store, &[], args)
}

/// Runs `palpipe ARGS --store STORE --quiet` with the environment variables `ENV` set.
pub fn palpipe_with_env(store: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let o = bin()
        .envs(env.iter().copied())
        .args(args)
        .arg("--store")
        .arg(store)
        .arg("--quiet")
        .output()
        .expect("run palpipe");
    done(o)
}

/// Runs palpipe without a --store flag (for tests of the flag itself).
pub fn palpipe_raw(args: &[&str]) -> Run {
    done(
        bin()
            .args(args)
            .env_remove("PALPIPE_STORE")
            .output()
            .expect("run palpipe"),
    )
}

/// `SELECT …` as JSON lines, parsed.
pub fn query(store: &Path, sql: &str) -> Vec<serde_json::Value> {
    let r = palpipe(store, &["sql", sql, "--format", "json"]).ok();
    r.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// One integer from a one-row query.
pub fn scalar(store: &Path, sql: &str) -> i64 {
    let rows = query(store, sql);
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    let obj = rows[0].as_object().expect("object");
    obj.values()
        .next()
        .and_then(|v| v.as_i64())
        .unwrap_or_else(|| panic!("{sql}: {rows:?}"))
}

/// table → (version, rows) for every table that exists, from `palpipe tables --format json`.
pub fn versions(store: &Path) -> std::collections::BTreeMap<String, (i64, i64)> {
    let r = palpipe(store, &["tables", "--format", "json"]).ok();
    r.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let t = v["table"].as_str()?.to_string();
            Some((t, (v["version"].as_i64()?, v["rows"].as_i64()?)))
        })
        .collect()
}

/// A small synthetic ingest stage (10 seen and 3 unseen users, 20 comparisons each, 10 of a
/// seen user's held out, 2 for validation), indented as an entry of a pipeline's `stages`.
pub const SMALL_SYNTH_STAGE: &str = "  - name: data
    kind: synthetic
    d: 2
    users: 10
    comparisons_per_user: 20
    held_out_per_user: 10
    val_per_user: 2
    unseen_users: 3
    items: 50
    seed: 7
";

/// A small synthetic pipeline with trained PAL-A heads, shared by the tests of model
/// commands: K* = 3 preference types, 30 seen users with 60 comparisons each (30 held out,
/// 5 for validation) and `unseen` new users; heads `k1` and `k3` (PAL-A, d = 2, 20 epochs)
/// trained on split `tr` with `va` for validation; then `stages` (YAML flow mappings) and
/// the splits `tr`, `va`, `te` followed by `splits` (`name: "SQL"` lines).
pub fn synth_pal_pipeline(name: &str, unseen: usize, stages: &[&str], splits: &[&str]) -> String {
    let head = format!(
        "name: {name}
stages:
  - name: data
    kind: synthetic
    d: 2
    k_star: 3
    users: 30
    comparisons_per_user: 60
    held_out_per_user: 30
    val_per_user: 5
    unseen_users: {unseen}
    seed: 3
"
    );
    let heads = ["k1", "k3"].map(|k| format!(
        "  - {{name: {k}, kind: train, model: pal-a, k: {}, train: tr, val: va, encoder: synthetic-identity, config: {{d: 2}}, training: {{epochs: 20}}}}\n",
        &k[1..]
    ));
    let more: String = stages.iter().map(|st| format!("  - {st}\n")).collect();
    let base_splits = [
        "tr: \"SELECT * FROM pairs WHERE split = 'train'\"",
        "va: \"SELECT * FROM pairs WHERE split = 'val'\"",
        "te: \"SELECT * FROM pairs WHERE split = 'test'\"",
    ];
    let splits: String = base_splits
        .iter()
        .chain(splits)
        .map(|sp| format!("  {sp}\n"))
        .collect();
    format!("{head}{}{more}splits:\n{splits}", heads.concat())
}

/// Writes a pipeline file into `dir` and returns its path.
pub fn write_pipeline(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Fails the test, saying how to install it, when all-MiniLM-L6-v2 (`make setup`) is missing.
pub fn require_minilm() {
    let home = std::env::var("HOME").unwrap_or_default();
    let root =
        std::env::var("PALPIPE_MODELS").unwrap_or_else(|_| format!("{home}/.cache/palpipe/models"));
    let f = Path::new(&root).join("all-MiniLM-L6-v2/model.safetensors");
    assert!(
        f.is_file(),
        "{} is missing: run 'make setup' to install all-MiniLM-L6-v2",
        f.display()
    );
}

/// Every row of `pairs` (all columns but none derived) and of `users`, each as one JSON text,
/// sorted: what two stores must share to hold the same comparisons and users.
pub fn pairs_and_users(store: &Path) -> (Vec<String>, Vec<String>) {
    let sorted = |sql: &str| {
        let mut v: Vec<String> = query(store, sql).iter().map(|r| r.to_string()).collect();
        v.sort();
        v
    };
    (
        sorted("SELECT pair_id, user_id, prompt_id, left_id, right_id, label, dataset, split, source_ref FROM pairs"),
        sorted("SELECT user_id, dataset, group_name, role FROM users"),
    )
}

/// content id → vector, from `palpipe sql` over `embeddings`.
pub fn stored_vectors(store: &Path) -> std::collections::HashMap<String, Vec<f64>> {
    query(store, "SELECT content_id, vector FROM embeddings")
        .into_iter()
        .map(|r| {
            let v = r["vector"]
                .as_array()
                .unwrap_or_else(|| panic!("vector as a JSON list: {r}"))
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            (r["content_id"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

/// `palpipe eval --model M --split S --json`, parsed.
pub fn eval_json(store: &Path, model: &str, split: &str) -> serde_json::Value {
    let r = palpipe(
        store,
        &["eval", "--model", model, "--split", split, "--json"],
    )
    .ok();
    serde_json::from_str(r.stdout.trim()).expect("one JSON object")
}

/// `palpipe embed --shard K/N --uncommitted --run-id RUN EXTRA…`, started.
pub fn start_shard(
    store: &Path,
    run: &str,
    k: usize,
    n: usize,
    extra: &[&str],
) -> std::process::Child {
    bin()
        .args(["embed", "--uncommitted", "--run-id", run, "--shard"])
        .arg(format!("{k}/{n}"))
        .args(extra)
        .args(["--quiet", "--store"])
        .arg(store)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start palpipe")
}

/// Waits for a shard and returns how many vectors it says it embedded.
pub fn finish_shard(child: std::process::Child) -> usize {
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out.split("embedded ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no count in {out}"))
}

/// `ingest FILE --dataset mine` with the columns of `{annotator, prompt, chosen, rejected}`
/// rows (user, prompt, chosen, rejected), then `extra`.
pub fn chosen_rejected_args(file: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["ingest", &file.to_string_lossy(), "--dataset", "mine"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for c in [
        "user=annotator",
        "prompt=prompt",
        "chosen=chosen",
        "rejected=rejected",
    ] {
        args.push("--column".into());
        args.push(c.into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Writes `rows` of (prompt, chosen, rejected), all from annotator `a1`, as the JSON lines
/// [`chosen_rejected_args`] reads.
pub fn write_chosen_rejected(file: &Path, rows: &[[String; 3]]) {
    let text: String = rows
        .iter()
        .map(|[p, c, r]| {
            format!(
                "{}\n",
                serde_json::json!({"annotator": "a1", "prompt": p, "chosen": c, "rejected": r})
            )
        })
        .collect();
    std::fs::write(file, text).unwrap();
}

/// Runs [`chosen_rejected_args`] on `store`.
pub fn ingest_chosen_rejected(store: &Path, file: &Path, extra: &[&str]) -> Run {
    let args = chosen_rejected_args(file, extra);
    palpipe(store, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Starts `palpipe ARGS --store STORE --quiet` told to pause at `point` (see
/// `src/store/race_hook.rs`) until the file `resume` exists; its stderr goes to `log`, where
/// [`wait_for_pause`] finds the pause.
pub fn start_paused(
    store: &Path,
    args: &[&str],
    point: &str,
    resume: &Path,
    log: &Path,
) -> std::process::Child {
    bin()
        .args(args)
        .arg("--store")
        .arg(store)
        .arg("--quiet")
        .env("PALPIPE_TEST_PAUSE", point)
        .env("PALPIPE_TEST_RESUME", resume)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(log).expect("a log file"))
        .spawn()
        .expect("start palpipe")
}

/// Waits (at most three minutes) until the process whose stderr is `log` says it paused at
/// `point`.
pub fn wait_for_pause(log: &Path, point: &str) {
    let start = std::time::Instant::now();
    let line = format!("test pause at {point}");
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(&line) {
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(180),
            "no pause at {point}: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits for a process started by [`start_paused`]: (exit code, stdout, stderr from `log`).
pub fn finish_paused(child: std::process::Child, log: &Path) -> (i32, String, String) {
    let o = child.wait_with_output().expect("wait for palpipe");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        std::fs::read_to_string(log).unwrap_or_default(),
    )
}
