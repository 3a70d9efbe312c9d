return {
  name = "t",
  learners = "two",
  framework = { name = "pytorch", version = "2.1.0", command = "x" },
}
