// A real HDFS for beam_zdl.testing.LocalHdfs: Hadoop's MiniDFSCluster with one
// NameNode and one DataNode on 127.0.0.1, WebHDFS on the NameNode's HTTP port.
//
// Run as a single-file source program (Java 11+, no compile step):
//   java -cp <hdfs classpath> MiniHdfs.java <basedir> <namenode_http_port> [format|reuse]
//
// "format" (the default) starts with empty storage; "reuse" restarts on the
// storage left in <basedir> by a previous (possibly killed) run. When the
// cluster serves, one line is printed:
//   MINIHDFS READY http=<port> rpc=<port>
// then the program blocks until it is killed.

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.MiniDFSCluster;

public class MiniHdfs {
  public static void main(String[] args) throws Exception {
    if (args.length < 2) {
      System.err.println("usage: MiniHdfs <basedir> <namenode_http_port> [format|reuse]");
      System.exit(2);
    }
    String baseDir = args[0];
    int httpPort = Integer.parseInt(args[1]);
    boolean format = args.length < 3 || !args[2].equals("reuse");

    Configuration conf = new Configuration();
    conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, baseDir);
    conf.setBoolean("dfs.webhdfs.enabled", true);
    // Tests write as any user.name; HDFS permissions would only get in the way.
    conf.setBoolean("dfs.permissions.enabled", false);
    conf.setInt("dfs.replication", 1);
    conf.set("dfs.namenode.http-address", "127.0.0.1:" + httpPort);
    conf.set("dfs.datanode.address", "127.0.0.1:0");
    conf.set("dfs.datanode.http.address", "127.0.0.1:0");
    conf.set("dfs.datanode.ipc.address", "127.0.0.1:0");
    // Few threads and small buffers: start fast, stay small on a 2-core machine.
    conf.setInt("dfs.namenode.handler.count", 2);
    conf.setInt("dfs.namenode.service.handler.count", 2);
    conf.setInt("dfs.datanode.handler.count", 2);
    conf.setInt("dfs.namenode.lifeline.handler.count", 1);
    conf.setInt("hadoop.http.max.threads", 16);
    conf.setInt("dfs.datanode.max.transfer.threads", 64);
    conf.setInt("dfs.datanode.directoryscan.threads", 1);
    conf.setInt("dfs.heartbeat.interval", 1);
    conf.setLong("dfs.namenode.safemode.extension", 0);
    conf.setInt("dfs.namenode.safemode.min.datanodes", 0);
    // Small blocks are fine: tests write kilobytes to a few megabytes.
    conf.setLong("dfs.namenode.fs-limits.min-block-size", 1024 * 1024);
    conf.setLong("dfs.blocksize", 16L * 1024 * 1024);

    MiniDFSCluster cluster = new MiniDFSCluster.Builder(conf)
        .numDataNodes(1)
        .storagesPerDatanode(1)
        .nameNodeHttpPort(httpPort)
        .format(format)
        .manageNameDfsDirs(true)
        .manageDataDfsDirs(true)
        .checkDataNodeAddrConfig(true)
        .build();
    cluster.waitActive();
    Runtime.getRuntime().addShutdownHook(new Thread(cluster::shutdown));
    System.out.println("MINIHDFS READY http=" + cluster.getNameNode().getHttpAddress().getPort()
        + " rpc=" + cluster.getNameNodePort());
    System.out.flush();
    Thread.currentThread().join();
  }
}
