//! Stores as an earlier palpipe wrote them, for the tests of upgrades (`tests/weight.rs`,
//! `tests/s3_cli.rs`, `tests/serve_cli.rs`): a folder store's table rewritten without a
//! column added since (`pairs.weight`, `enrollments.offset_json`), and a folder store copied
//! into a bucket of the test's moto server.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchIterator};
use futures::TryStreamExt;

/// Rewrites `store`'s `pairs` table as an earlier palpipe wrote it: the same rows, without
/// the `weight` column (a new table, so its files hold no trace of the column).
pub fn make_old(store: &Path) {
    drop_column(store, "pairs", "weight");
}

/// Rewrites the folder store's `table` as an earlier palpipe wrote it: the same rows, without
/// `column` (a new table, so its files hold no trace of the column).
pub fn drop_column(store: &Path, table: &str, column: &str) {
    let uri = store.join(format!("{table}.lance"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ds = lance::Dataset::open(uri.to_str().unwrap()).await.unwrap();
        let batches: Vec<RecordBatch> = ds
            .scan()
            .try_into_stream()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let schema = Arc::new(arrow_schema::Schema::from(ds.schema()));
        let keep: Vec<usize> = (0..schema.fields().len())
            .filter(|&i| schema.field(i).name() != column)
            .collect();
        assert_eq!(keep.len(), schema.fields().len() - 1);
        let old: Vec<RecordBatch> = batches.iter().map(|b| b.project(&keep).unwrap()).collect();
        let old_schema = Arc::new(schema.project(&keep).unwrap());
        drop(ds);
        std::fs::remove_dir_all(&uri).unwrap();
        let reader = RecordBatchIterator::new(old.into_iter().map(Ok), old_schema);
        lance::Dataset::write(reader, uri.to_str().unwrap(), None)
            .await
            .unwrap();
    });
}

/// Copies every file of the folder store `local` (but its lock file) under the prefix of
/// the `s3://bucket/prefix` store `s3`, one unsigned PUT per file (moto checks no
/// signature): the bucket then holds the same tables, as lance reads them.
pub fn upload(local: &Path, s3: &Path) {
    use std::io::{Read, Write};
    let uri = s3.to_str().unwrap().strip_prefix("s3://").unwrap();
    let (bucket, prefix) = uri.split_once('/').unwrap();
    let port = super::common::moto().port;
    let mut todo = vec![local.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
                continue;
            }
            let rel = p.strip_prefix(local).unwrap().to_str().unwrap().to_string();
            if rel == ".palpipe.lock" {
                continue;
            }
            let body = std::fs::read(&p).unwrap();
            let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)))
                .unwrap();
            write!(
                tcp,
                "PUT /{bucket}/{prefix}/{rel} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .unwrap();
            tcp.write_all(&body).unwrap();
            let mut reply = String::new();
            let _ = tcp.read_to_string(&mut reply);
            assert!(
                reply.starts_with("HTTP/1.1 200"),
                "uploading {rel}: {reply}"
            );
        }
    }
}
