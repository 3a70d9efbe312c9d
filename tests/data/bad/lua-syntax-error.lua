return {
  name = "t"
  learners = 2,
}
