# dstream demo tasks. `make demo` runs counter-to-console.
#
# Provider images come from the local registry that `make services` starts and
# `make images` fills; in real use they come from any registry (GHCR, ACR, ...).
locals {
  registry = "127.0.0.1:5000"
  version  = "0.1.0"
}

# A counter feeding the console, both as containers pulled from the registry.
task "counter-to-console" {
  type = "providers"
  input {
    provider_ref = "${local.registry}/dstream/counter-input-provider:${local.version}"
    config {
      interval  = 250   # milliseconds between envelopes
      max_count = 20
    }
  }
  output {
    provider_ref = "${local.registry}/dstream/console-output-provider:${local.version}"
    config {
      outputFormat = "structured"
    }
  }
}

# The same pipeline with the providers as local processes (pip install -e providers/...).
task "counter-to-console-local" {
  input {
    provider_path = "counter-input-provider"
    config {
      interval  = 250
      max_count = 20
    }
  }
  output {
    provider_path = "console-output-provider"
    config { outputFormat = "simple" }
  }
}

# Counter to a JSONL file, with checkpoints: stop it with Ctrl-C and run it again,
# it resumes where it stopped.
task "counter-to-file" {
  input {
    provider_path = "counter-input-provider"
    config {
      interval         = 10
      max_count        = 100000
      checkpoint_every = 100
    }
  }
  output {
    provider_path = "file-output-provider"
    config {
      path  = ".dstream/out/counter.jsonl"
      fsync = true
    }
  }
}
