//! Several requests in flight (`aio=io_uring`).
