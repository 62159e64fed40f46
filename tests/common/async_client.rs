//! tokio-postgres on a private runtime, for an error the blocking client hides.

use postgres::SimpleQueryMessage;

use super::Pooler;

/// tokio-postgres on a private runtime. The `postgres` crate drops an
/// ErrorResponse that arrives together with the end of the connection
/// (it reports "connection closed" instead), so a FATAL that closes the
/// client is read through this.
pub struct AsyncClient {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl AsyncClient {
    /// Connects as `user` to `db` through `pooler`; panics when that fails.
    pub fn connect(pooler: &Pooler, user: &str, password: &str, db: &str) -> AsyncClient {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let config = pooler.tokio_config(user, password, db);
        let client = rt
            .block_on(async {
                let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok::<_, tokio_postgres::Error>(client)
            })
            .unwrap_or_else(|e| panic!("connecting as {user} through the pooler: {e:?}"));
        AsyncClient { rt, client }
    }

    /// The first column of the first row of `sql`.
    pub fn first_value(&self, sql: &str) -> Result<String, tokio_postgres::Error> {
        let msgs = self.rt.block_on(self.client.simple_query(sql))?;
        Ok(msgs
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{sql}: no row")))
    }
}
