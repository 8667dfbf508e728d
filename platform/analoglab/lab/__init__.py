"""The lab site: the agent that runs approved jobs on a lab's frontier models, its executors
(a local child process, a Kubernetes Job), and the release checks a result passes before it
leaves the lab. See ``docs/lab.md``."""
