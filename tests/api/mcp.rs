//! `POST /mcp` at the HTTP level: the same bearer token as the REST API, or
//! the same 401. (A real MCP client drives the tools in tests/sdk.)

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, token};

fn initialize() -> Value {
    json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": { "name": "cordon-test", "version": "1" }
        }
    })
}

async fn post_mcp(app: &TestApp, bearer: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("request")
}

#[tokio::test]
async fn mcp_without_a_valid_token_is_401_with_the_api_error_shape() {
    let app = spawn_app().await;
    for bearer in [None, Some("not-a-jwt")] {
        let r = post_mcp(&app, bearer, &initialize()).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    app.stop().await;
}

#[tokio::test]
async fn mcp_with_a_token_initializes_and_lists_the_memory_tools() {
    let app = spawn_app().await;
    let alice = token("acme", "alice");
    let r = post_mcp(&app, Some(&alice), &initialize()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("a JSON answer");
    assert_eq!(body["result"]["serverInfo"]["name"], "cordon");
    assert!(body["result"]["capabilities"]["tools"].is_object());
    let list = json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {} });
    let r = post_mcp(&app, Some(&alice), &list).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("a JSON answer");
    let tools = body["result"]["tools"].as_array().expect("tools");
    let mut names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "forget",
            "list_memories",
            "recall",
            "remember",
            "update_memory"
        ]
    );
    // No tool takes an argument that could name a user.
    for tool in tools {
        let properties = tool["inputSchema"]["properties"]
            .as_object()
            .expect("an input schema");
        for name in properties.keys() {
            assert!(
                !["user", "user_id", "owner", "sub", "tenant"].contains(&name.as_str()),
                "tool {} takes `{name}`",
                tool["name"]
            );
        }
    }
    app.stop().await;
}

/// Calls `tool` with `arguments` as the holder of `bearer`; the tool result.
async fn call_tool(app: &TestApp, bearer: &str, tool: &str, arguments: Value) -> Value {
    let body = json!({
        "jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": { "name": tool, "arguments": arguments }
    });
    let r = post_mcp(app, Some(bearer), &body).await;
    assert_eq!(r.status(), StatusCode::OK, "tools/call {tool}");
    let answer: Value = r.json().await.expect("a JSON answer");
    answer["result"].clone()
}

#[tokio::test]
async fn tool_calls_act_for_the_token_user_only_and_free_their_slot() {
    // One request in flight per user: a slot a tool call kept would refuse
    // the next call with 429.
    let app = crate::helpers::spawn_app_with(|s| s.access.user_limits.max_in_flight = 1).await;
    let (alice, bob) = (token("acme", "alice"), token("acme", "bob"));
    let stored = call_tool(
        &app,
        &alice,
        "remember",
        json!({ "text": "alice keeps bees" }),
    )
    .await;
    let id = stored["structuredContent"]["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    for _ in 0..3 {
        let found = call_tool(&app, &bob, "recall", json!({ "query": "bees" })).await;
        assert_eq!(found["structuredContent"]["memories"], json!([]));
    }
    let forget = call_tool(&app, &bob, "forget", json!({ "id": id })).await;
    assert_eq!(forget["isError"], true);
    let found = call_tool(&app, &alice, "recall", json!({ "query": "bees" })).await;
    assert_eq!(
        found["structuredContent"]["memories"][0]["text"],
        "alice keeps bees"
    );
    app.stop().await;
}
