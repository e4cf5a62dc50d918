//! Tasks: work put in a queue server's queue by a producer and run by
//! workers that the server feeds by push (PROTOCOL.md, "Tasks").

mod types;

pub use types::{
    Backoff, DEFAULT_BACKOFF, Every, MAX_ATTEMPTS_LIMIT, MAX_DEDUPE_LEN, MethodLimit, MethodStats,
    Priority, Rate, Schedule, ScheduleInfo, TaskInfo, TaskOptions, TaskRef, TaskRefError,
    TaskState,
};
