//! A full server and worker, using every argument and return form.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use stream_rpc::{Context, HandlerError, Message, Packet, Reply};

#[derive(Serialize, Deserialize)]
struct Article {
    article_id: u32,
}

#[derive(Default)]
struct QueueServer {
    queue: Mutex<VecDeque<Packet>>,
}

#[stream_rpc::service]
impl QueueServer {
    async fn ping(&self) -> Message<()> {
        Message::new("pong", ())
    }

    async fn put_in_queue(&self, task: Packet) -> Message<()> {
        self.queue.lock().unwrap().push_back(task);
        Message::new("pong", ())
    }

    async fn get_task_from_queue(&self) -> Reply {
        match self.queue.lock().unwrap().pop_front() {
            Some(task) => Reply::Forward(task),
            None => Reply::message("pong", stream_rpc::json!(null)),
        }
    }

    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn checked(&self, ctx: stream_rpc::Context, value: u32) -> Result<u32, HandlerError> {
        let _ = ctx.peer();
        value.checked_mul(2).ok_or_else(|| HandlerError::failed("too large"))
    }

    async fn fallible(&self, text: String) -> Result<(), std::num::ParseIntError> {
        text.parse::<u8>().map(drop)
    }

    #[stream_rpc(rename = "log")]
    async fn log_line(&self, line: String) {
        let _ = line;
    }

    #[stream_rpc(skip)]
    fn depth(&self) -> usize {
        self.queue.lock().unwrap().len()
    }
}

struct Worker;

#[stream_rpc::service(name = "ArticleWorker")]
impl Worker {
    async fn pong(&self, ctx: Context) -> Reply {
        Reply::message("ping", stream_rpc::json!({"from": ctx.local_id()}))
    }

    async fn parse_article(&self, ctx: Context, article: Article) -> Reply {
        let _ = article.article_id;
        Reply::Forward(ctx.packet("get_task_from_queue", stream_rpc::json!(null)))
    }
}

fn assert_protocol<P: stream_rpc::Protocol>(_: &P) {}

async fn use_clients(session: &stream_rpc::Connection) -> Result<(), stream_rpc::CallError> {
    let server = QueueServerClient::new(session.clone());
    let _: () = server.ping().await?;
    let _: Packet = server.get_task_from_queue().await?;
    let _: i64 = server.add(1, 2).await?;
    let _: Result<u32, stream_rpc::HandlerError> = server.checked(3).await?;
    let _: Result<(), std::num::ParseIntError> = server.fallible("7".into()).await?;
    let _: () = server.log_line("hello".into()).await?;
    let worker: WorkerClient = WorkerClient::new(session.clone());
    let _: Packet = worker.parse_article(Article { article_id: 1 }).await?;
    Ok(())
}

fn main() {
    let server = QueueServer::default();
    assert_protocol(&server);
    assert_protocol(&Worker);
    assert_eq!(server.depth(), 0);
    assert_eq!(
        QueueServer::METHODS,
        ["ping", "put_in_queue", "get_task_from_queue", "add", "checked", "fallible", "log"]
    );
    assert_eq!(stream_rpc::Protocol::name(&Worker), "ArticleWorker");
    assert_eq!(stream_rpc::Protocol::name(&server), "QueueServer");
    let _ = use_clients;
}
