// Test tooling: the test node's sandbox ("pause") program, and the process of the workload images
// the node suite runs. Standard library only, built static by scripts/cluster.
module imagecache.test/cluster/pause

go 1.26.0
