# PostgreSQL CDC into a JSONL file, against the server `make services` starts
# (postgresql://dstream:dstream@127.0.0.1:5432/dstream_test; set EXAMPLE_PG_DSN for another).
#   pip install -e '.[postgres]' -e providers/postgres-cdc -e providers/file
#   psql postgresql://dstream:dstream@127.0.0.1:5432/dstream_test \
#     -c 'CREATE TABLE IF NOT EXISTS example_orders (id int PRIMARY KEY, item text, qty int)'
#   dstream init orders-cdc -f examples/postgres-cdc-to-file.hcl    # creates the replication slot
#   dstream run orders-cdc -f examples/postgres-cdc-to-file.hcl     # Ctrl-C stops; a new run resumes
#   dstream destroy orders-cdc -f examples/postgres-cdc-to-file.hcl --yes
task "orders-cdc" {
  input {
    provider_path = "postgres-cdc-input-provider"
    config {
      dsn       = env("EXAMPLE_PG_DSN", "postgresql://dstream:dstream@127.0.0.1:5432/dstream_test")
      tables    = ["public.example_orders"]
      slot_name = "dstream_example_orders"
      snapshot  = "initial"   # the rows already there first (OperationType "Read"), then changes
    }
    # As an image instead (provider_ref = "127.0.0.1:5000/dstream/postgres-cdc-input-provider:0.1.0"),
    # add: container { network = "host" }   (127.0.0.1 in a bridge container is the container itself)
  }
  output {
    provider_path = "file-output-provider"
    config { path = ".dstream/out/example-orders.jsonl" }
  }
}
