//! The typed producer `XTasks` of both forms: one method per method that
//! is not a stream, returning a `PutTask` whose handle reads the method's
//! result; stream methods and a method named `tasks` have none.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use stream_rpc::tasks::{Priority, PutTask, Retry, TaskError, TaskHandle};
use stream_rpc::{Connection, Context, HandlerError, Message, Reply, Streaming};

#[derive(Debug, Serialize, Deserialize)]
pub enum ParseError {
    Gone,
    Busy,
}

impl Retry for ParseError {
    fn retry(&self) -> bool {
        matches!(self, ParseError::Busy)
    }
}

#[derive(Debug)]
pub struct Opaque;

impl std::fmt::Display for Opaque {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("opaque")
    }
}

#[stream_rpc::service]
pub trait Articles {
    async fn parse(&self, ctx: Context, article_id: u64) -> Result<String, ParseError>;
    async fn count(&self) -> u64;
    async fn note(&self, text: String);
    async fn pong(&self) -> Message<u8>;
    async fn raw(&self) -> Reply;
    async fn coded(&self, a: u8, b: u8) -> Result<u8, HandlerError>;
    async fn opaque(&self) -> Result<(), Opaque>;
    async fn tasks(&self) -> u8;
    async fn watch(&self) -> Streaming<u64>;
}

struct Jobs;

#[stream_rpc::service]
impl Jobs {
    async fn resize(&self, image: u64) -> Result<u64, ParseError> {
        Ok(image)
    }
}

async fn typed(articles: &ArticlesTasks<Connection>) -> Result<(), TaskError> {
    let parse: PutTask<'_, Connection, String, ParseError> = articles.parse(7);
    let handle: TaskHandle<String, ParseError> = parse
        .delay(Duration::from_secs(1))
        .priority(Priority::High)
        .max_attempts(3)
        .dedupe("parse-7")
        .timeout(Duration::from_secs(60))
        .await?;
    let _: Result<String, ParseError> = handle.result().await?;
    let _: TaskHandle<u64, HandlerError> = articles.count().await?;
    let _: TaskHandle<(), HandlerError> = articles.note("x".to_owned()).await?;
    let _: TaskHandle<u8, HandlerError> = articles.pong().await?;
    let _: TaskHandle<stream_rpc::Value, HandlerError> = articles.raw().await?;
    let _: TaskHandle<u8, HandlerError> = articles.coded(1, 2).await?;
    let _: TaskHandle<(), Opaque> = articles.opaque().await?;
    let _ = articles.tasks().stats().await?;
    Ok(())
}

async fn of_impl(jobs: &JobsTasks<Connection>) -> Result<(), TaskError> {
    let handle = jobs.resize(3).await?;
    let _: Result<u64, ParseError> = handle.result_within(Duration::from_secs(1)).await?;
    Ok(())
}

fn main() {
    let _ = typed;
    let _ = of_impl;
    let _ = ArticlesTasks::<Connection>::new;
    let _ = JobsTasks::<Connection>::new;
}
