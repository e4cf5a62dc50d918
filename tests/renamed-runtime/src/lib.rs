//! A service written against the runtime under the name `rpc`; nothing
//! named `stream_rpc` is in scope.

use serde::{Deserialize, Serialize};

/// A point.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Across.
    pub x: i32,
    /// Down.
    pub y: i32,
}

/// A service.
pub struct Geometry;

#[rpc::service]
impl Geometry {
    /// Moves a point.
    pub async fn shift(&self, point: Point, by: i32) -> Point {
        Point {
            x: point.x + by,
            y: point.y + by,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_items_use_the_renamed_crate() {
        fn assert_service<P: rpc::Service>(_: &P) {}
        assert_service(&Geometry);
        assert_eq!(Geometry::METHODS, ["shift"]);
        assert_eq!(GeometryClient::METHODS, ["shift"]);
        let _: fn(rpc::Connection) -> GeometryClient = GeometryClient::new;
    }
}
