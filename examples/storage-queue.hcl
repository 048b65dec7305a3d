# A counter into an Azure Storage queue on Azurite (`make services` starts it), then the
# queue into a file. The connection string is Azurite's well-known development account;
# set EXAMPLE_STORAGE for a real account.
#   pip install -e '.[azure]' -e providers/counter -e providers/azure -e providers/file
#   dstream init counter-to-queue -f examples/storage-queue.hcl    # creates the queue
#   dstream run counter-to-queue -f examples/storage-queue.hcl
#   dstream status counter-to-queue -f examples/storage-queue.hcl  # messages waiting
#   dstream run queue-to-file -f examples/storage-queue.hcl        # Ctrl-C when it has them all
#   dstream destroy counter-to-queue -f examples/storage-queue.hcl --yes
locals {
  storage = env("EXAMPLE_STORAGE", "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;")
}

task "counter-to-queue" {
  input {
    provider_path = "counter-input-provider"
    config {
      interval  = 0
      max_count = 30
    }
  }
  output {
    provider_path = "azure-queue-output-provider"
    config {
      connection_string = local.storage
      queue             = "dstream-example"
    }
  }
}

task "queue-to-file" {
  input {
    provider_path = "azure-queue-input-provider"
    config {
      connection_string = local.storage
      queue             = "dstream-example"
      max_idle          = "5s"   # end the run once the queue stays empty this long
    }
  }
  output {
    provider_path = "file-output-provider"
    config { path = ".dstream/out/from-queue.jsonl" }
  }
}
