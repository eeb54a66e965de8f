//! A Kubernetes API server for tests, behind `tower_test::mock::pair` as kube-rs documents: a task
//! answers each request the client makes from an in-memory object store and records it, so a test can
//! assert which requests a reconcile made (method, path, query, body) and what the objects became.
//!
//! It implements what the operator uses: GET, POST (create, 409 when present), PUT (replace, 409 on a
//! stale resourceVersion), DELETE, and PATCH as server-side apply (the applied fields replace, status
//! kept), JSON merge patch (status subresource) and JSON patch (finalizers, with `test`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};

/// One request the client made.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

impl Call {
    /// `"PATCH /apis/apps/v1/namespaces/prod/deployments/x"`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

#[derive(Clone, Default)]
pub struct FakeApi {
    objects: Arc<Mutex<BTreeMap<String, Value>>>,
    calls: Arc<Mutex<Vec<Call>>>,
    /// (method or "*", path) answered with this status instead (injected failures).
    failures: Arc<Mutex<BTreeMap<(String, String), u16>>>,
    version: Arc<Mutex<u64>>,
}

impl FakeApi {
    /// A client talking to a new fake API server.
    pub fn start() -> (kube::Client, Self) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = Self::default();
        let server = api.clone();
        tokio::spawn(async move {
            let mut handle = std::pin::pin!(handle);
            // Watches are held open without events until the client goes away.
            let mut watches = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                if request
                    .uri()
                    .query()
                    .is_some_and(|q| q.contains("watch=true"))
                {
                    server.record(&request, Value::Null);
                    watches.push(send);
                    continue;
                }
                let response = server.answer(request).await;
                send.send_response(response);
            }
        });
        (kube::Client::new(service, "default"), api)
    }

    pub fn put(&self, path: &str, mut object: Value) {
        self.stamp(&mut object);
        self.objects
            .lock()
            .expect("lock")
            .insert(path.to_owned(), object);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.objects.lock().expect("lock").get(path).cloned()
    }

    pub fn remove(&self, path: &str) {
        self.objects.lock().expect("lock").remove(path);
    }

    /// Changes an object in place (e.g. what the kubelet reports in a workload's status).
    pub fn edit(&self, path: &str, f: impl FnOnce(&mut Value)) {
        let mut objects = self.objects.lock().expect("lock");
        let object = objects
            .get_mut(path)
            .unwrap_or_else(|| panic!("no object {path}"));
        f(object);
    }

    /// Answers every request to `path` with `status`.
    pub fn fail(&self, path: &str, status: u16) {
        self.fail_method("*", path, status);
    }

    /// Answers `method` requests to `path` with `status`.
    pub fn fail_method(&self, method: &str, path: &str, status: u16) {
        self.failures
            .lock()
            .expect("lock")
            .insert((method.to_owned(), path.to_owned()), status);
    }

    pub fn paths(&self) -> Vec<String> {
        self.objects.lock().expect("lock").keys().cloned().collect()
    }

    /// Every call so far, and forget them.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().expect("lock"))
    }

    /// The calls so far without events (whose count depends on the recorder's cache).
    pub fn take_calls_without_events(&self) -> Vec<Call> {
        self.take_calls()
            .into_iter()
            .filter(|c| !c.path.contains("/events"))
            .collect()
    }

    /// The event reasons published so far.
    pub fn event_reasons(&self) -> Vec<String> {
        self.objects
            .lock()
            .expect("lock")
            .iter()
            .filter(|(k, _)| k.contains("/events/"))
            .filter_map(|(_, v)| v["reason"].as_str().map(str::to_owned))
            .collect()
    }

    fn record(&self, request: &Request<Body>, body: Value) {
        self.calls.lock().expect("lock").push(Call {
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            query: request.uri().query().unwrap_or_default().to_owned(),
            content_type: String::new(),
            body,
        });
    }

    /// The objects of a collection path (`/apis/g/v/plural` or `/apis/g/v/namespaces/ns/plural`).
    fn list(&self, path: &str) -> Value {
        let (prefix, plural) = path.rsplit_once('/').unwrap_or_default();
        let namespaced = prefix.contains("/namespaces/");
        let items: Vec<Value> = self
            .objects
            .lock()
            .expect("lock")
            .iter()
            .filter(|(k, _)| {
                k.contains(&format!("/{plural}/"))
                    && if namespaced {
                        k.starts_with(&format!("{path}/"))
                    } else {
                        k.starts_with(prefix)
                    }
            })
            .map(|(_, v)| v.clone())
            .collect();
        let version = self.version.lock().expect("lock").to_string();
        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": version}, "items": items})
    }

    fn stamp(&self, object: &mut Value) {
        let mut v = self.version.lock().expect("lock");
        *v += 1;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(v.to_string()));
            meta.entry("uid")
                .or_insert_with(|| Value::String(format!("uid-{v}")));
            meta.entry("generation").or_insert(json!(1));
        }
    }

    async fn answer(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .or_else(|_| serde_saphyr::from_slice(&bytes))
                .unwrap_or(Value::Null)
        };
        self.calls.lock().expect("lock").push(Call {
            method: method.clone(),
            path: path.clone(),
            query,
            content_type: content_type.clone(),
            body: body.clone(),
        });
        if method == Method::GET && is_collection(&path) {
            return ok(200, &self.list(&path));
        }
        let failure = {
            let failures = self.failures.lock().expect("lock");
            failures
                .get(&(method.to_string(), path.clone()))
                .or_else(|| failures.get(&("*".to_owned(), path.clone())))
                .copied()
        };
        if let Some(code) = failure {
            return status(code, "injected failure");
        }
        let (object_path, subresource) = match path.strip_suffix("/status") {
            Some(p) => (p.to_owned(), true),
            None => (path.clone(), false),
        };
        match method {
            Method::GET => match self.get(&object_path) {
                Some(o) => ok(200, &o),
                None => status(404, "not found"),
            },
            Method::POST => {
                let name = body["metadata"]["name"].as_str().unwrap_or_default();
                let key = format!("{path}/{name}");
                if self.get(&key).is_some() {
                    return status(409, "already exists");
                }
                let mut object = body;
                fill_type(&mut object, &key);
                self.put(&key, object.clone());
                ok(201, &self.get(&key).unwrap_or(object))
            }
            Method::PUT => {
                let Some(current) = self.get(&object_path) else {
                    return status(404, "not found");
                };
                if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                    return status(409, "the object has been modified");
                }
                self.put(&object_path, body);
                ok(200, &self.get(&object_path).unwrap_or(Value::Null))
            }
            Method::DELETE => match self.get(&object_path) {
                Some(o) => {
                    self.remove(&object_path);
                    ok(200, &o)
                }
                None => status(404, "not found"),
            },
            Method::PATCH => self.patch(&object_path, subresource, &content_type, body),
            _ => status(405, "method not allowed"),
        }
    }

    fn patch(
        &self,
        path: &str,
        subresource: bool,
        content_type: &str,
        body: Value,
    ) -> Response<Body> {
        let current = self.get(path);
        let next = if content_type.starts_with("application/apply-patch") {
            // Server-side apply: the applied fields become the object; what others own (status) stays.
            let mut next = body;
            if let Some(cur) = &current {
                if let Some(s) = cur.get("status") {
                    next["status"] = s.clone();
                }
                next["metadata"]["uid"] = cur["metadata"]["uid"].clone();
            }
            next
        } else {
            let Some(mut cur) = current else {
                return status(404, "not found");
            };
            if content_type.starts_with("application/merge-patch") {
                let patch = if subresource {
                    json!({"status": body["status"]})
                } else {
                    body
                };
                merge(&mut cur, &patch);
            } else if content_type.starts_with("application/json-patch") {
                if let Err(m) = json_patch(&mut cur, &body) {
                    return status(422, &m);
                }
            } else {
                return status(415, "unsupported patch type");
            }
            cur
        };
        self.put(path, next);
        // A finalized object whose last finalizer went is deleted for real.
        if let Some(o) = self.get(path) {
            let deleting = o["metadata"]["deletionTimestamp"].is_string();
            let finalizers = o["metadata"]["finalizers"].as_array().map_or(0, Vec::len);
            if deleting && finalizers == 0 {
                self.remove(path);
            }
            return ok(200, &o);
        }
        status(404, "not found")
    }
}

/// Whether a path names a collection rather than an object: `/api/v1/<plural>`,
/// `/api/v1/namespaces/<ns>/<plural>`, and the same under `/apis/<group>/<version>`.
fn is_collection(path: &str) -> bool {
    let rest = path
        .strip_prefix("/api/v1/")
        .or_else(|| {
            path.strip_prefix("/apis/")
                .and_then(|p| p.splitn(3, '/').nth(2))
        })
        .unwrap_or_default();
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    match parts.first() {
        Some(&"namespaces") => parts.len() == 3,
        Some(_) => parts.len() == 1,
        None => false,
    }
}

fn fill_type(object: &mut Value, path: &str) {
    if path.contains("/events/") {
        object["apiVersion"] = json!("events.k8s.io/v1");
        object["kind"] = json!("Event");
    }
}

fn ok(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::OK))
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap_or_default()))
        .expect("response")
}

fn status(code: u16, message: &str) -> Response<Body> {
    let reason = match code {
        404 => "NotFound",
        409 => "AlreadyExists",
        _ => "Invalid",
    };
    ok(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code}),
    )
}

/// RFC 7386.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// The RFC 6902 operations kube's finalizer helper sends.
fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    for op in ops.as_array().into_iter().flatten() {
        let path = op["path"].as_str().unwrap_or_default();
        let (parent_path, last) = path.rsplit_once('/').ok_or("bad path")?;
        match op["op"].as_str() {
            Some("test") => {
                let actual = target.pointer(path).cloned().unwrap_or(Value::Null);
                if actual != op["value"] {
                    return Err(format!("test failed at {path}"));
                }
            }
            Some("add") => {
                let parent = target.pointer_mut(parent_path).ok_or("no parent")?;
                match parent {
                    Value::Array(a) if last == "-" => a.push(op["value"].clone()),
                    Value::Array(a) => {
                        a.insert(last.parse().map_err(|_| "index")?, op["value"].clone())
                    }
                    Value::Object(m) => {
                        m.insert(last.to_owned(), op["value"].clone());
                    }
                    _ => return Err("bad parent".into()),
                }
            }
            Some("remove") => {
                let parent = target.pointer_mut(parent_path).ok_or("no parent")?;
                match parent {
                    Value::Array(a) => {
                        let i: usize = last.parse().map_err(|_| "index")?;
                        if i >= a.len() {
                            return Err("index out of range".into());
                        }
                        a.remove(i);
                    }
                    Value::Object(m) => {
                        m.remove(last);
                    }
                    _ => return Err("bad parent".into()),
                }
            }
            other => return Err(format!("unsupported op {other:?}")),
        }
    }
    Ok(())
}
