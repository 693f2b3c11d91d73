//! `docs/openapi.yaml` and the error table of `docs/http-api.md` against the gateway, so the
//! documented contract cannot drift from what the code serves:
//!
//! - the routes: every documented path and method is one the router declares (read from
//!   `node/src/http/mod.rs`) and vice versa, and a live gateway answers each of them (not its
//!   "no such endpoint" fallback, not 405), while a method a documented path does not list is
//!   answered 405;
//! - the errors: the documented error codes are exactly [`ErrorCode::ALL`], every code is
//!   documented under the status it is answered with, and no response documents a code under
//!   another status (`x-any-path-responses` holds what any path may answer, such as 405);
//!   every operation documents 429 `busy` and, unless it is open, 401 `unauthorized`;
//! - the error table of `docs/http-api.md` lists every code with its status.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::*;
use swarmkv::core::CoreConfig;
use swarmkv::http::auth::OPEN_PATHS;
use swarmkv::http::ErrorCode;
use yaml_rust2::{Yaml, YamlLoader};

const SPEC: &str = include_str!("../docs/openapi.yaml");
const ROUTER: &str = include_str!("../node/src/http/mod.rs");
const GUIDE: &str = include_str!("../docs/http-api.md");
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

fn spec() -> Result<Yaml> {
    YamlLoader::load_from_str(SPEC)
        .context("docs/openapi.yaml is not YAML")?
        .into_iter()
        .next()
        .context("docs/openapi.yaml is empty")
}

/// Every documented (path, method), methods lower case.
fn documented_routes(spec: &Yaml) -> Result<BTreeSet<(String, String)>> {
    let paths = spec["paths"].as_hash().context("no paths")?;
    let mut routes = BTreeSet::new();
    for (path, item) in paths {
        let path = path.as_str().context("a path that is not a string")?;
        for (method, _) in item.as_hash().context("a path that is not a map")? {
            let method = method.as_str().unwrap_or_default();
            if METHODS.contains(&method) {
                routes.insert((path.to_string(), method.to_string()));
            }
        }
    }
    Ok(routes)
}

/// Every (path, method) the router declares, read from its source: each `.route("PATH",
/// METHOD(handler).METHOD(handler)...)`. A catch-all path segment `{*key}` is written `{key}`
/// in OpenAPI. A route taking `any` method only answers errors (the empty key) and is left out.
fn declared_routes() -> Result<BTreeSet<(String, String)>> {
    let mut routes = BTreeSet::new();
    let mut rest = ROUTER;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let call = balanced(rest).context("an unbalanced .route( call")?;
        let open = call.find('"').context("a route without a path literal")?;
        let close = call[open + 1..].find('"').context("an unterminated path")? + open + 1;
        let path = call[open + 1..close].replace("{*", "{");
        let handlers = &call[close + 1..];
        if handlers
            .trim_start_matches([',', ' ', '\n'])
            .starts_with("any(")
        {
            continue;
        }
        let mut found = false;
        for method in METHODS {
            let bare = format!("{method}(");
            let chained = format!(".{method}(");
            let starts = handlers
                .trim_start_matches([',', ' ', '\n'])
                .starts_with(&bare);
            if starts || handlers.contains(&chained) {
                routes.insert((path.clone(), method.to_string()));
                found = true;
            }
        }
        ensure!(found, "no method found in the route {path}: {handlers}");
    }
    ensure!(!routes.is_empty(), "no route found in node/src/http/mod.rs");
    Ok(routes)
}

/// The text up to the parenthesis that closes the one just opened.
fn balanced(text: &str) -> Option<&str> {
    let mut depth = 1;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[..i]);
                }
            }
            _ => {}
        }
    }
    None
}

#[test]
fn documented_routes_are_the_routes_the_router_declares() -> Result<()> {
    let documented = documented_routes(&spec()?)?;
    let mut declared = declared_routes()?;
    // `POST /v1/kv/{key}/cas` is served by the `{*key}` route, whose handler takes the last
    // segment as the verb; the router declares it as `POST /v1/kv/{key}`.
    ensure!(declared.remove(&("/v1/kv/{key}".into(), "post".into())));
    declared.insert(("/v1/kv/{key}/cas".into(), "post".into()));
    let undocumented: Vec<_> = declared.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&declared).collect();
    ensure!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not documented: {undocumented:?}; documented but not served: {unserved:?}"
    );
    Ok(())
}

/// The status and body of a request, reading at most the head and a short body (server-sent
/// event streams never end).
fn probe(addr: SocketAddr, method: &str, target: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body: &[u8] = if method == "GET" { b"" } else { b"{}" };
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("{method} {target}: connection closed before the head");
        }
        got.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .context("no status")?
        .parse()
        .context("a status that is not a number")?;
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let mut body = got[end + 4..].to_vec();
    if let Some(length) = length.filter(|l| *l <= 1 << 20) {
        while body.len() < length {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A concrete request target for a documented path.
fn target(path: &str) -> String {
    path.replace("{key}", "openapi-probe")
        .replace("{id}", "1")
        .replace("{name}", "openapi-probe")
        .replace("{node}", "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_gateway_answers_every_documented_route_and_405s_the_other_methods() -> Result<()> {
    let _serial = serial().await;
    let cluster = TestCluster::start(
        1,
        4,
        CoreConfig {
            tick_ms: 50,
            ..CoreConfig::default()
        },
    )
    .await;
    let gateway = common::gateway::Gateway::for_client(
        cluster
            .client(0)
            .await
            .with_deadline(Duration::from_secs(2)),
    )
    .await?;
    let addr = gateway.addr;
    let documented = documented_routes(&spec()?)?;
    let checked = tokio::task::spawn_blocking(move || -> Result<usize> {
        let mut by_path: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (path, method) in &documented {
            by_path.entry(path).or_default().insert(method);
        }
        let mut checked = 0;
        for (path, methods) in &by_path {
            for method in METHODS {
                let upper = method.to_ascii_uppercase();
                let (status, body) = probe(addr, &upper, &target(path))?;
                let fallback = status == 404 && body.contains("no such endpoint");
                if methods.contains(method) {
                    ensure!(
                        !fallback && status != 405,
                        "{upper} {path} is documented but answered {status}: {body}"
                    );
                } else if *path != "/v1/kv/{key}/cas" {
                    // `/v1/kv/{key}/cas` with another method is a request for the key
                    // `{key}/cas`: not a route of its own.
                    ensure!(
                        status == 405 && body.contains("method_not_allowed"),
                        "{upper} {path} is not documented but answered {status}: {body}"
                    );
                }
                checked += 1;
            }
        }
        Ok(checked)
    })
    .await??;
    ensure!(checked >= 5 * 15, "only {checked} probes");
    gateway.shutdown().await?;
    drop(cluster);
    Ok(())
}

/// The description of a response, following a `$ref` to `components/responses`.
fn response_description<'a>(spec: &'a Yaml, response: &'a Yaml) -> Result<&'a str> {
    let response = match response["$ref"].as_str() {
        Some(r) => {
            let name = r
                .strip_prefix("#/components/responses/")
                .with_context(|| format!("a response $ref outside components/responses: {r}"))?;
            &spec["components"]["responses"][name]
        }
        None => response,
    };
    response["description"]
        .as_str()
        .context("a response without a description")
}

/// The words written `like_this` in a text.
fn quoted(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2)
}

/// Every (operation, status, description) of the spec.
fn responses(spec: &Yaml) -> Result<Vec<(String, u16, &str)>> {
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_hash().context("no paths")? {
        let path = path.as_str().unwrap_or_default();
        for (method, op) in item.as_hash().context("a path that is not a map")? {
            let method = method.as_str().unwrap_or_default();
            if !METHODS.contains(&method) {
                continue;
            }
            let name = format!("{} {path}", method.to_ascii_uppercase());
            for (status, response) in op["responses"].as_hash().context("no responses")? {
                let status: u16 = match status {
                    Yaml::String(s) => s.parse()?,
                    Yaml::Integer(i) => u16::try_from(*i)?,
                    other => bail!("{name}: a status that is not a number: {other:?}"),
                };
                out.push((name.clone(), status, response_description(spec, response)?));
            }
        }
    }
    Ok(out)
}

/// The responses any path may give (`x-any-path-responses`), as (status, description).
fn any_path_responses(spec: &Yaml) -> Result<Vec<(u16, &str)>> {
    let mut out = Vec::new();
    if let Some(responses) = spec["x-any-path-responses"].as_hash() {
        for (status, response) in responses {
            let status: u16 = status.as_str().context("a quoted status")?.parse()?;
            out.push((status, response_description(spec, response)?));
        }
    }
    Ok(out)
}

#[test]
fn every_error_code_is_documented_under_its_status() -> Result<()> {
    let spec = spec()?;
    let codes: BTreeMap<&str, u16> = ErrorCode::ALL
        .iter()
        .map(|c| (c.code, c.status.as_u16()))
        .collect();
    let listed: BTreeSet<&str> = spec["components"]["schemas"]["ErrorDetail"]["properties"]["code"]
        ["enum"]
        .as_vec()
        .context("no ErrorDetail code enum")?
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let known: BTreeSet<&str> = codes.keys().copied().collect();
    ensure!(
        listed == known,
        "ErrorDetail.code lists {:?} that the gateway never answers and lacks {:?}",
        listed.difference(&known).collect::<Vec<_>>(),
        known.difference(&listed).collect::<Vec<_>>()
    );

    let mut documented: BTreeSet<(&str, u16)> = BTreeSet::new();
    let mut problems = Vec::new();
    let mut statuses: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    let any_path = any_path_responses(&spec)?
        .into_iter()
        .map(|(status, description)| ("any path".to_string(), status, description));
    for (op, status, description) in responses(&spec)?.into_iter().chain(any_path) {
        if op != "any path" {
            statuses.entry(op.clone()).or_default().insert(status);
        }
        for word in quoted(description) {
            let Some(&actual) = codes.get(word) else {
                continue;
            };
            if actual == status {
                documented.insert((word, status));
            } else {
                problems.push(format!(
                    "{op}: `{word}` documented under {status}, answered with {actual}"
                ));
            }
        }
    }
    for (code, status) in &codes {
        if !documented.contains(&(*code, *status)) {
            problems.push(format!(
                "`{code}` ({status}) is documented under no response"
            ));
        }
    }
    for (op, statuses) in &statuses {
        let path = op.split(' ').nth(1).unwrap_or_default();
        if !statuses.contains(&429) {
            problems.push(format!("{op} does not document 429 `busy`"));
        }
        if !OPEN_PATHS.contains(&path) && !statuses.contains(&401) {
            problems.push(format!("{op} does not document 401 `unauthorized`"));
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[test]
fn the_error_table_of_the_http_guide_lists_every_code_with_its_status() -> Result<()> {
    let mut table: BTreeMap<&str, u16> = BTreeMap::new();
    for line in GUIDE.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(status), Some(codes)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Ok(status) = status.parse::<u16>() else {
            continue;
        };
        for code in quoted(codes) {
            ensure!(
                table.insert(code, status).is_none(),
                "`{code}` is in the table twice"
            );
        }
    }
    let codes: BTreeMap<&str, u16> = ErrorCode::ALL
        .iter()
        .map(|c| (c.code, c.status.as_u16()))
        .collect();
    ensure!(
        table == codes,
        "docs/http-api.md's error table {table:?}\ndiffers from the gateway's codes {codes:?}"
    );
    Ok(())
}
