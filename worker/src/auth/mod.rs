//! Client and server authentication: userlist, md5, SCRAM-SHA-256.
