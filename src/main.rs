//! pgbouncers command line: parse arguments, set up logging, hand the config to the supervisor.

fn main() {}
