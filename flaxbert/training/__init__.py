"""Pre-training: losses (`losses`) and the model + loss glue for each objective (`objectives`)."""
