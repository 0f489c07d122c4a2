//! The S3 backend: a repository under a prefix of a bucket on any S3-compatible store, reached
//! with path-style requests through the `object_store` crate (docs/DESIGN.md, "Object
//! storage", says why that crate). The trait is synchronous; each call blocks on one shared
//! runtime, so calls from several threads (the pack writer, restore's readers) run concurrently.
//!
//! Objects appear whole or not at all: every object is sent with one PUT, which S3 publishes
//! atomically, after it is complete in memory (a pack is at most the pack size, four of them at
//! a time: the packer's memory bound). No multipart upload is ever started, so none is left
//! behind by a process that dies, and there are no temporary objects to clean up.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use super::{Backend, ObjectWriter};
use crate::error::{Error, Result};

/// `s3:http[s]://HOST[:PORT]/BUCKET[/PREFIX]`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    /// `http://HOST[:PORT]` or `https://…`: where requests go.
    pub endpoint: String,
    pub bucket: String,
    /// The folder of the repository inside the bucket, without slashes at either end ("" for
    /// the whole bucket).
    pub prefix: String,
}

impl S3Url {
    /// Parses the text after `s3:`. Credentials in the URL are refused: they would end up in
    /// logs, job files and lock objects.
    pub fn parse(text: &str) -> Result<S3Url> {
        let bad = |reason: &str| Error::BadLocation { location: format!("s3:{text}"), reason: reason.into() };
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("expected s3:http://HOST[:PORT]/BUCKET[/PREFIX] or s3:https://…"))?;
        if scheme != "http" && scheme != "https" {
            return Err(bad("the endpoint must start with http:// or https://"));
        }
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if let Some((_, after)) = host.rsplit_once('@') {
            // Not repeated in the message either.
            return Err(Error::BadLocation {
                location: format!("s3:{scheme}://…@{after}/…"),
                reason: "credentials do not belong in the URL (they would be written to logs and locks): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
            });
        }
        let path = path.trim_matches('/');
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket: the path after the host names the bucket"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p.is_empty() || p == "." || p == "..") && !prefix.is_empty() {
            return Err(bad("the prefix has an empty, '.' or '..' folder"));
        }
        Ok(S3Url { endpoint: format!("{scheme}://{host}"), bucket: bucket.into(), prefix: prefix.into() })
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3:{}/{}", self.endpoint, self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// The runtime every S3 call blocks on: two workers, shared by the whole process.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("strata-s3")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Internal { reason: format!("cannot start the S3 client's runtime: {e}") })
}

/// How long a request is retried (with exponential backoff) before it fails: 60 s, or
/// `STRATA_S3_RETRY_SECONDS`.
fn retry_config() -> RetryConfig {
    let seconds = std::env::var("STRATA_S3_RETRY_SECONDS").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(60);
    RetryConfig {
        max_retries: if seconds == 0 { 0 } else { 10 },
        retry_timeout: Duration::from_secs(seconds),
        ..Default::default()
    }
}

pub struct S3Store {
    url: S3Url,
    store: AmazonS3,
}

impl S3Store {
    /// A client for `url`, with credentials and region from the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_DEFAULT_REGION`
    /// or `AWS_REGION`), or from the profile `AWS_PROFILE` (default `default`) in
    /// `~/.aws/credentials` when the environment has no key. Nothing is sent yet.
    pub fn new(url: &S3Url) -> Result<S3Store> {
        let mut builder = AmazonS3Builder::new()
            .with_endpoint(&url.endpoint)
            .with_bucket_name(&url.bucket)
            .with_allow_http(url.endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(retry_config());
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let region = env("AWS_DEFAULT_REGION").or_else(|| env("AWS_REGION")).unwrap_or_else(|| "us-east-1".into());
        builder = builder.with_region(region);
        match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => {
                builder = builder.with_access_key_id(id).with_secret_access_key(secret);
                if let Some(token) = env("AWS_SESSION_TOKEN") {
                    builder = builder.with_token(token);
                }
            }
            _ => match profile_credentials()? {
                Some((id, secret)) => builder = builder.with_access_key_id(id).with_secret_access_key(secret),
                None => {
                    return Err(Error::BadLocation {
                        location: url.to_string(),
                        reason: "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a profile in ~/.aws/credentials".into(),
                    })
                }
            },
        }
        let store =
            builder.build().map_err(|e| Error::BadLocation { location: url.to_string(), reason: e.to_string() })?;
        Ok(S3Store { url: url.clone(), store })
    }

    pub fn url(&self) -> &S3Url {
        &self.url
    }

    fn key(&self, path: &str) -> Key {
        if self.url.prefix.is_empty() {
            Key::from(path)
        } else {
            Key::from(format!("{}/{path}", self.url.prefix))
        }
    }

    /// The name of an object in messages: the repository's URL and the object's path.
    fn name(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("{}/{path}", self.url))
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = object_store::Result<T>>) -> object_store::Result<T> {
        match runtime() {
            Ok(rt) => rt.block_on(f),
            Err(e) => Err(object_store::Error::Generic { store: "S3", source: e.to_string().into() }),
        }
    }

    fn error(&self, op: &'static str, path: &str, e: object_store::Error) -> Error {
        remote_error(op, self.name(path), &self.url, e)
    }

    /// Whether anything is stored under the repository's prefix, asked with one listing of its
    /// top level: the first request of every command, so a wrong endpoint, key or bucket is
    /// named before anything else happens.
    pub fn probe(&self) -> Result<bool> {
        let prefix = (!self.url.prefix.is_empty()).then(|| Key::from(self.url.prefix.as_str()));
        let top =
            self.block_on(self.store.list_with_delimiter(prefix.as_ref())).map_err(|e| self.error("list", "", e))?;
        Ok(!top.objects.is_empty() || !top.common_prefixes.is_empty())
    }

    fn list_keys(&self, dir: &str) -> Result<Vec<String>> {
        Ok(self.list_versions(dir)?.into_iter().map(|(path, _)| path).collect())
    }

    /// The objects whose names start with `dir`, sorted, each with its version: its ETag and
    /// size, which change whenever it is rewritten (the cache's record of what it reflects).
    pub fn list_versions(&self, dir: &str) -> Result<Vec<(String, String)>> {
        let prefix = if dir.is_empty() && self.url.prefix.is_empty() { None } else { Some(self.key(dir)) };
        let metas: Vec<object_store::ObjectMeta> =
            self.block_on(self.store.list(prefix.as_ref()).try_collect()).map_err(|e| self.error("list", dir, e))?;
        let strip = if self.url.prefix.is_empty() { String::new() } else { format!("{}/", self.url.prefix) };
        let mut out: Vec<(String, String)> = metas
            .into_iter()
            .filter_map(|m| {
                let version = format!("{} {}", m.e_tag.unwrap_or_default(), m.size);
                m.location.as_ref().strip_prefix(strip.as_str()).map(|p| (p.to_string(), version))
            })
            .collect();
        out.sort();
        Ok(out)
    }
}

/// A typed error for a failed request: a missing object is `Io` with `NotFound` (what callers
/// already match on), the rest names the store and what to check.
fn remote_error(op: &'static str, name: PathBuf, url: &S3Url, e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => {
            Error::Io { op, path: name, cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no such object") }
        }
        other => {
            let text = other.to_string();
            let hint = match other {
                object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                    CREDENTIALS.into()
                }
                _ => hint_for(&text, url),
            };
            Error::Remote { op, object: name.display().to_string(), hint, detail: short_detail(&text) }
        }
    }
}

const CREDENTIALS: &str = "the store refused the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)";

/// What to check, read from the text of an error the client did not type. Status codes are
/// matched with their words ("403 Forbidden"), never as bare digits, which also occur in the
/// request's duration ("in 403.011µs").
fn hint_for(text: &str, url: &S3Url) -> String {
    let any = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    if any(&["NoSuchBucket"]) {
        format!("the bucket {} does not exist at {}: create it first", url.bucket, url.endpoint)
    } else if any(&["InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403 Forbidden", "401 Unauthorized"])
    {
        CREDENTIALS.into()
    } else if any(&["error sending request", "onnection refused", "timed out"]) {
        format!("the store at {} did not answer", url.endpoint)
    } else {
        "the store answered with an error".into()
    }
}

/// The store's answer without its XML: `Code: Message` when it sent an S3 error document.
fn short_detail(text: &str) -> String {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(&text[start..end])
    };
    let head = text.split("<?xml").next().unwrap_or(text).trim_end().trim_end_matches(':');
    match (tag("Code"), tag("Message")) {
        (Some(code), Some(message)) => format!("{head}: {code}: {message}"),
        _ => head.chars().take(400).collect(),
    }
}

/// Access key and secret of the profile `AWS_PROFILE` (or `default`) in the shared credentials
/// file (`AWS_SHARED_CREDENTIALS_FILE`, or `~/.aws/credentials`); `None` without that file or
/// profile.
fn profile_credentials() -> Result<Option<(String, String)>> {
    let path = match std::env::var_os("AWS_SHARED_CREDENTIALS_FILE") {
        Some(p) => PathBuf::from(p),
        None => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".aws/credentials"),
            None => return Ok(None),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    let profile = std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "default".into());
    Ok(parse_profile(&text, &profile))
}

/// The `aws_access_key_id` and `aws_secret_access_key` of `[profile]` in an INI text.
fn parse_profile(text: &str, profile: &str) -> Option<(String, String)> {
    let (mut section, mut id, mut secret) = (String::new(), None, None);
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
        } else if section == profile {
            if let Some((k, v)) = line.split_once('=') {
                match k.trim() {
                    "aws_access_key_id" => id = Some(v.trim().to_string()),
                    "aws_secret_access_key" => secret = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
    }
    id.zip(secret)
}

/// The bytes of a ranged read, which must be `len` long: a shorter answer means the object is
/// shorter than the index says.
fn exactly(s: &S3Store, path: &str, bytes: &[u8], len: usize) -> Result<Vec<u8>> {
    if bytes.len() != len {
        return Err(Error::Io {
            op: "read",
            path: s.name(path),
            cause: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the object is shorter than its index says"),
        });
    }
    Ok(bytes.to_vec())
}

/// An object being written: kept in memory and sent with one PUT on commit, so the store never
/// holds part of it.
struct S3Writer {
    store: Arc<S3Store>,
    path: String,
    data: Vec<u8>,
}

impl Write for S3Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for S3Writer {
    fn commit(self: Box<Self>) -> Result<()> {
        let S3Writer { store, path, data } = *self;
        S3Backend(store).put(&path, &data)
    }
}

/// The backend over an `S3Store`, shared so that writers can outlive the call that made them.
pub struct S3Backend(pub Arc<S3Store>);

impl Backend for S3Backend {
    fn put(&self, path: &str, data: &[u8]) -> Result<()> {
        crate::failpoint::step!();
        // The object is complete and not yet visible: where the local store renames.
        crate::failpoint::hit!("object-before-rename");
        let s = &self.0;
        s.block_on(s.store.put(&s.key(path), PutPayload::from(data.to_vec())))
            .map(|_| ())
            .map_err(|e| s.error("write", path, e))
    }

    fn create(&self, path: &str) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(S3Writer { store: self.0.clone(), path: path.to_string(), data: Vec::new() }))
    }

    fn get(&self, path: &str) -> Result<Vec<u8>> {
        let s = &self.0;
        let key = s.key(path);
        s.block_on(async { s.store.get(&key).await?.bytes().await })
            .map(|b| b.to_vec())
            .map_err(|e| s.error("read", path, e))
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + Send>> {
        Ok(Box::new(std::io::Cursor::new(self.get(path)?)))
    }

    fn read_at(&self, path: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let s = &self.0;
        if len == 0 {
            return Ok(Vec::new());
        }
        let bytes = s
            .block_on(s.store.get_range(&s.key(path), offset..offset + len as u64))
            .map_err(|e| s.error("read", path, e))?;
        exactly(s, path, &bytes, len)
    }

    fn size(&self, path: &str) -> Result<u64> {
        let s = &self.0;
        s.block_on(s.store.head(&s.key(path))).map(|m| m.size).map_err(|e| s.error("stat", path, e))
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let dir = dir.trim_end_matches('/');
        let mut out = self.0.list_keys(dir)?;
        // A listing by prefix also matches "packsfoo": keep what is inside the folder.
        if !dir.is_empty() {
            let folder = format!("{dir}/");
            out.retain(|p| p.starts_with(&folder));
        }
        Ok(out)
    }

    fn remove(&self, path: &str) -> Result<()> {
        crate::failpoint::step!();
        let s = &self.0;
        s.block_on(s.store.delete(&s.key(path))).map_err(|e| s.error("remove", path, e))
    }

    fn temporaries(&self) -> Result<Vec<(String, u64)>> {
        Ok(Vec::new())
    }

    fn remove_temporary(&self, _path: &str) -> Result<()> {
        Ok(())
    }

    fn available(&self) -> Option<u64> {
        None
    }

    /// Four packs at a time: the packer's four buffers (its memory bound) all in flight.
    fn concurrent_requests(&self) -> usize {
        4
    }

    /// One request per object (object_store merges ranges of one object that are close), up to
    /// 16 objects at once.
    fn read_ranges(&self, reads: &[(String, u64, usize)]) -> Vec<Result<Vec<u8>>> {
        use futures_util::StreamExt;
        let s = &self.0;
        let mut by_path: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
        for (i, (path, _, _)) in reads.iter().enumerate() {
            by_path.entry(path.as_str()).or_default().push(i);
        }
        let requests = by_path.into_iter().map(|(path, at)| {
            let ranges: Vec<std::ops::Range<u64>> =
                at.iter().map(|&i| reads[i].1..reads[i].1 + reads[i].2 as u64).collect();
            async move {
                let key = s.key(path);
                (path, at, s.store.get_ranges(&key, &ranges).await)
            }
        });
        let mut out: Vec<Option<Result<Vec<u8>>>> = (0..reads.len()).map(|_| None).collect();
        let fetched = match runtime() {
            Ok(rt) => rt.block_on(futures_util::stream::iter(requests).buffer_unordered(16).collect::<Vec<_>>()),
            Err(e) => return reads.iter().map(|_| Err(Error::Internal { reason: e.to_string() })).collect(),
        };
        for (path, at, result) in fetched {
            match result {
                Ok(parts) => {
                    for (i, bytes) in at.into_iter().zip(parts) {
                        out[i] = Some(exactly(s, path, &bytes, reads[i].2));
                    }
                }
                Err(e) => {
                    // One failed request fails each of its ranges alike.
                    let error = s.error("read", path, e);
                    for i in at {
                        out[i] = Some(Err(error.duplicate()));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Internal { reason: "a range was not read".into() })))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_read_status_words_not_digits_that_happen_to_be_in_a_duration() {
        let url = S3Url::parse("http://127.0.0.1:9/bucket").unwrap();
        // The text CI printed when nothing listened on the port: "403" is in the duration only.
        let unanswered = "Generic S3 error: Error performing list request: Error performing GET \
            http://127.0.0.1:9/bucket?delimiter=%2F&list-type=2 in 403.011µs - HTTP error: error sending request";
        assert_eq!(hint_for(unanswered, &url), "the store at http://127.0.0.1:9 did not answer");
        let refused = "Error performing list request: Server returned non-2xx status code: 403 Forbidden: ";
        assert_eq!(hint_for(refused, &url), CREDENTIALS);
        let missing = "Server returned non-2xx status code: 404 Not Found: <Code>NoSuchBucket</Code>";
        assert!(hint_for(missing, &url).starts_with("the bucket bucket does not exist"));
        assert_eq!(hint_for("took 401.2ms: 500 Internal Server Error", &url), "the store answered with an error");
    }

    #[test]
    fn urls_name_endpoint_bucket_and_prefix() {
        let u = S3Url::parse("http://127.0.0.1:9000/bucket/some/prefix/").unwrap();
        assert_eq!(u.endpoint, "http://127.0.0.1:9000");
        assert_eq!(u.bucket, "bucket");
        assert_eq!(u.prefix, "some/prefix");
        assert_eq!(u.to_string(), "s3:http://127.0.0.1:9000/bucket/some/prefix");
        let u = S3Url::parse("https://s3.example.com/b").unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("b", ""));
        for bad in
            ["ftp://h/b", "http://h", "http://h/", "http:///b", "http://key:secret@h/b", "h/b", "http://h/b/../x"]
        {
            assert!(matches!(S3Url::parse(bad), Err(Error::BadLocation { .. })), "{bad} accepted");
        }
    }

    #[test]
    fn a_profile_gives_its_own_keys() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n[other]\naws_access_key_id=C\naws_secret_access_key=D\n";
        assert_eq!(parse_profile(text, "default"), Some(("A".into(), "B".into())));
        assert_eq!(parse_profile(text, "other"), Some(("C".into(), "D".into())));
        assert_eq!(parse_profile(text, "missing"), None);
    }
}
