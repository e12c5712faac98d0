//! `POST /mcp`: the memory API as Model Context Protocol tools.
//!
//! An agent's MCP client gets five tools, `remember`, `recall`,
//! `update_memory`, `forget` and `list_memories`, and a prompt, `use-memory`, that says when to use them.
//! The transport is rmcp's streamable HTTP server in stateless mode: every
//! POST carries its own bearer token, which [`authenticate`] turns into a
//! [`Caller`] exactly as on the REST routes (same verifier, lockout, access
//! rules and limits) before rmcp sees the request. A tool finds that caller
//! in the request's extensions ([`McpCaller`]); no tool argument names a
//! user, and every tool calls the same operations as the REST handlers, so
//! every result has passed the guard.
//!
//! Stateless means no MCP session outlives a request, so there is no session
//! one user's token could join another's in. rmcp runs each tool in a task
//! of its own, so a tool also stops when rmcp cancels the request (request
//! timeout, client gone), as a REST handler is dropped. Host and Origin checks are off:
//! they guard servers that trust whoever can reach them, and this one trusts
//! only a bearer token, which a browser never attaches on its own.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post_service;
use rmcp::handler::server::common::{AsRequestContext, FromContextPart};
use rmcp::handler::server::router::prompt::PromptRouter;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{Implementation, PromptMessage, Role, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler, prompt, prompt_handler, prompt_router};
use rmcp::{schemars, tool, tool_handler, tool_router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::Instrument as _;
use uuid::Uuid;

use super::AppState;
use super::memories::{self, MemoryInput, SearchRequest};
use super::update::{self, IfMatch, MetadataMode, UpdateRequest};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::guard::Memory;

/// What an agent is told about the server when it connects.
const INSTRUCTIONS: &str = "Long-term memory for the user you are helping. \
Use `recall` with a short description of what you need before answering \
anything that may depend on what the user told you before; use `remember` \
for durable facts, preferences and decisions worth keeping (one fact per \
memory, in the user's words); use `update_memory` to correct a memory \
rather than storing a second, conflicting one; use `forget` when the user \
asks you to, with the id from `recall` or `list_memories`. The memories are this user's only: \
you cannot reach anyone else's, and nothing you pass names a user.";

/// The route, its MCP service behind the same authentication as `/v1`.
pub fn router(state: AppState) -> Router<AppState> {
    // Built once: building the routers generates every tool's JSON schema,
    // which a request (each gets a server of its own) need not redo.
    let template = Memories::new(state.clone());
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .disable_allowed_hosts()
        .disable_allowed_origins()
        .with_max_request_body_bytes(state.limits.max_body_bytes);
    let service = StreamableHttpService::new(
        move || Ok(template.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    Router::new().route(
        "/mcp",
        post_service(service).layer(middleware::from_fn_with_state(state, authenticate)),
    )
}

/// Runs the [`Caller`] extractor (so a bad token gets the API's 401) and
/// hands the caller to the tools through the request's extensions.
async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let caller = match Caller::from_request_parts(&mut parts, &state).await {
        Ok(caller) => caller,
        Err(rejection) => return rejection.into_response(),
    };
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, body)).await
}

/// The caller of the HTTP request that carried a tool call.
pub struct McpCaller(Caller);

impl<C: AsRequestContext> FromContextPart<C> for McpCaller {
    fn from_context_part(context: &mut C) -> Result<Self, ErrorData> {
        context
            .as_request_context()
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Caller>())
            .cloned()
            .map(McpCaller)
            // Unreachable behind `authenticate`; refusing is the safe answer.
            .ok_or_else(|| ErrorData::invalid_request("no authenticated caller", None))
    }
}

/// The MCP server: the memory tools and the usage prompt.
#[derive(Clone)]
pub struct Memories {
    state: AppState,
    tool_router: ToolRouter<Self>,
    prompt_router: PromptRouter<Self>,
}

/// `remember`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RememberArgs {
    /// The fact to keep, in a sentence or two.
    pub text: String,
    /// Optional flat facts about it (string, integer or boolean values),
    /// e.g. {"topic": "diet"}; `recall` can filter on them.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Forget it by itself at this time (Unix milliseconds), e.g. for a
    /// plan that only holds until a date; null: never, whatever the
    /// server's default.
    #[serde(default, deserialize_with = "super::validate::present")]
    pub expires_at: Option<Option<i64>>,
    /// Forget it by itself after this many seconds; not with `expires_at`.
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
    /// If a memory of the user is at least this similar (cosine, e.g. 0.95),
    /// keep that one instead of adding a second copy.
    #[serde(default)]
    pub duplicate_threshold: Option<f32>,
}

/// `update_memory`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct UpdateArgs {
    /// The memory's id, as `recall` or `list_memories` gave it.
    pub id: String,
    /// The corrected fact, replacing the old text.
    #[serde(default)]
    pub text: Option<String>,
    /// Metadata changes: keys set, keys given as null removed, others kept.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// A new expiry time (Unix milliseconds); null: never expire.
    #[serde(default, deserialize_with = "super::validate::present")]
    pub expires_at: Option<Option<i64>>,
    /// Seconds from now until it expires; not with `expires_at`.
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
    /// Only if the memory is still at this version (as `recall` showed it).
    #[serde(default)]
    pub version: Option<u64>,
}

/// `recall`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RecallArgs {
    /// What you need to know, in words.
    pub query: String,
    /// Most memories to return (1 to 100, default 10).
    #[serde(default)]
    pub limit: Option<i64>,
    /// Leave out memories scoring below this (cosine similarity, -1 to 1).
    #[serde(default)]
    pub min_score: Option<f32>,
    /// Only memories whose metadata meets each condition: a value for
    /// equality, {"in": [..]} for any of several, {"gte": n, "lt": n} for a
    /// numeric range.
    #[serde(default)]
    pub filter: Option<Map<String, Value>>,
    /// Only memories stored after this time (Unix milliseconds).
    #[serde(default)]
    pub created_after: Option<i64>,
    /// Only memories stored before this time (Unix milliseconds).
    #[serde(default)]
    pub created_before: Option<i64>,
    /// "semantic" (by meaning), "keyword" (exact names, codes, numbers) or
    /// "hybrid" (both); the server's default when absent.
    #[serde(default)]
    pub mode: Option<String>,
}

/// `forget`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ForgetArgs {
    /// The memory's id, as `recall` or `list_memories` gave it.
    pub id: String,
}

/// `list_memories`' arguments (pages in id order: the order of storing, for
/// memories stored without an idempotency key).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ListArgs {
    /// Memories per page (1 to 100, default 20).
    #[serde(default)]
    pub limit: Option<i64>,
    /// The `next_cursor` of the page before.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Only memories whose metadata meets each condition (as `recall`).
    #[serde(default)]
    pub filter: Option<Map<String, Value>>,
    /// Only memories stored after this time (Unix milliseconds).
    #[serde(default)]
    pub created_after: Option<i64>,
    /// Only memories stored before this time (Unix milliseconds).
    #[serde(default)]
    pub created_before: Option<i64>,
}

/// A memory as the tools return it.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ToolMemory {
    /// Its id (for `forget`).
    pub id: String,
    /// The text.
    pub text: String,
    /// Its metadata.
    pub metadata: Map<String, Value>,
    /// Milliseconds since the Unix epoch at the store.
    pub created_at: i64,
    /// 1 when stored, one more with each update.
    pub version: u64,
    /// Milliseconds since the Unix epoch at the last update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<i64>,
    /// Milliseconds since the Unix epoch when it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Similarity to the query (`recall` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
}

/// `remember`'s answer.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Remembered {
    /// The memory's id: the new one, or the existing near-duplicate's.
    pub id: String,
    /// With a duplicate threshold: whether an existing memory matched and
    /// nothing was added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
}

/// `recall`'s answer.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Recalled {
    /// The memories, best match first.
    pub memories: Vec<ToolMemory>,
}

/// `forget`'s answer.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Forgotten {
    /// The id that was deleted.
    pub id: String,
}

/// `list_memories`' answer.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Listed {
    /// This page, in id order.
    pub memories: Vec<ToolMemory>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

fn tool_memory(memory: &Memory) -> Result<ToolMemory, String> {
    serde_json::to_value(memory)
        .and_then(serde_json::from_value)
        .map_err(|_| "internal: a memory could not be encoded".to_owned())
}

fn tool_memories(memories: &[Memory]) -> Result<Vec<ToolMemory>, String> {
    memories.iter().map(tool_memory).collect()
}

fn parse_id(id: &str) -> Result<Uuid, String> {
    Uuid::parse_str(id.trim()).map_err(|_| "invalid_request: not a memory id".to_owned())
}

/// Runs one tool's work in a span with the caller's tag (never the text),
/// stops it when rmcp cancels the request, and notes a success in the
/// caller's access log, touching `touched` of what it answers memories.
async fn run_tool<T>(
    state: &AppState,
    tool: &'static str,
    caller: &Caller,
    context: &RequestContext<RoleServer>,
    work: impl Future<Output = Result<T, ApiError>>,
    touched: impl FnOnce(&T) -> usize,
) -> Result<T, String> {
    let span = tracing::info_span!("mcp_tool", tool, owner = %caller.owner.log_tag());
    let done = tokio::select! {
        result = work.instrument(span) => result.map_err(|e| e.client_text()),
        () = context.ct.cancelled() => Err("cancelled: the request ended before the tool finished".into()),
    }?;
    super::noted(state, caller, tool, "mcp", touched(&done)).await;
    Ok(done)
}

#[tool_router]
impl Memories {
    /// A server over the application's state.
    pub fn new(state: AppState) -> Self {
        Self {
            state,
            tool_router: Self::tool_router(),
            prompt_router: Self::prompt_router(),
        }
    }

    /// Stores one memory for the user.
    #[tool(description = "Remember a fact about the user for later conversations. Returns its id.")]
    async fn remember(
        &self,
        McpCaller(caller): McpCaller,
        context: RequestContext<RoleServer>,
        Parameters(args): Parameters<RememberArgs>,
    ) -> Result<Json<Remembered>, String> {
        let input = MemoryInput {
            text: args.text,
            metadata: args.metadata.map(Value::Object),
            expires_at: args.expires_at,
            ttl_seconds: args.ttl_seconds,
            duplicate_threshold: args.duplicate_threshold,
        };
        let work = memories::store_memories(&self.state, &caller, None, vec![input]);
        let stored = run_tool(&self.state, "remember", &caller, &context, work, |s| {
            s.ids.len()
        })
        .await?;
        let id = stored.ids.first().ok_or("internal: no id was returned")?;
        let duplicate = stored.duplicate.and_then(|d| d.first().copied());
        Ok(Json(Remembered {
            id: id.to_string(),
            duplicate,
        }))
    }

    /// Searches the user's memories by meaning.
    #[tool(
        description = "Recall the user's memories most related to a query, best first, with scores."
    )]
    async fn recall(
        &self,
        McpCaller(caller): McpCaller,
        context: RequestContext<RoleServer>,
        Parameters(args): Parameters<RecallArgs>,
    ) -> Result<Json<Recalled>, String> {
        let request = SearchRequest {
            query: args.query,
            limit: args.limit,
            min_score: args.min_score,
            filter: args.filter,
            created_after: args.created_after,
            created_before: args.created_before,
            mode: args
                .mode
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| format!("invalid_request: {e}"))?,
        };
        let work = memories::search_memories(&self.state, &caller, request);
        let found = run_tool(&self.state, "recall", &caller, &context, work, Vec::len).await?;
        Ok(Json(Recalled {
            memories: tool_memories(&found)?,
        }))
    }

    /// Changes one of the user's memories in place.
    #[tool(
        description = "Correct or change one of the user's memories by its id: new text, metadata changes or a new expiry. Returns the memory as updated."
    )]
    async fn update_memory(
        &self,
        McpCaller(caller): McpCaller,
        context: RequestContext<RoleServer>,
        Parameters(args): Parameters<UpdateArgs>,
    ) -> Result<Json<ToolMemory>, String> {
        let id = parse_id(&args.id)?;
        let request = UpdateRequest {
            text: args.text,
            metadata: args.metadata,
            metadata_mode: MetadataMode::Merge,
            expires_at: args.expires_at,
            ttl_seconds: args.ttl_seconds,
        };
        let if_match = args.version.map_or(IfMatch::Absent, IfMatch::Version);
        let work = update::update_memory(&self.state, &caller, id, if_match, request);
        let memory = run_tool(&self.state, "update_memory", &caller, &context, work, |_| 1).await?;
        Ok(Json(tool_memory(&memory)?))
    }

    /// Deletes one of the user's memories.
    #[tool(description = "Forget one of the user's memories by its id.")]
    async fn forget(
        &self,
        McpCaller(caller): McpCaller,
        context: RequestContext<RoleServer>,
        Parameters(args): Parameters<ForgetArgs>,
    ) -> Result<Json<Forgotten>, String> {
        let id = parse_id(&args.id)?;
        let work = memories::delete_memory(&self.state, &caller, id);
        run_tool(&self.state, "forget", &caller, &context, work, |_| 1).await?;
        Ok(Json(Forgotten { id: id.to_string() }))
    }

    /// Pages through the user's memories in id order.
    #[tool(description = "List the user's memories page by page (in the order they were stored).")]
    async fn list_memories(
        &self,
        McpCaller(caller): McpCaller,
        context: RequestContext<RoleServer>,
        Parameters(args): Parameters<ListArgs>,
    ) -> Result<Json<Listed>, String> {
        let cursor = args.cursor.as_deref().map(parse_id).transpose()?;
        let narrowed = memories::ListFilter {
            filter: args.filter,
            created_after: args.created_after,
            created_before: args.created_before,
        };
        let work = memories::list_memories(&self.state, &caller, args.limit, cursor, narrowed);
        let page = run_tool(&self.state, "list_memories", &caller, &context, work, |p| {
            p.memories.len()
        })
        .await?;
        Ok(Json(Listed {
            memories: tool_memories(&page.memories)?,
            next_cursor: page.next_cursor.map(|c| c.to_string()),
        }))
    }
}

#[prompt_router]
impl Memories {
    /// How an agent should use the memory tools.
    #[prompt(
        name = "use-memory",
        description = "How to use this server's memory tools in a conversation."
    )]
    async fn use_memory(&self) -> Vec<PromptMessage> {
        vec![PromptMessage::new_text(Role::User, INSTRUCTIONS)]
    }
}

#[tool_handler(router = self.tool_router)]
#[prompt_handler(router = self.prompt_router)]
impl ServerHandler for Memories {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_prompts()
                .build(),
        )
        .with_server_info(Implementation::new("cordon", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS)
    }
}
