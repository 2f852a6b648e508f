// PostgreSQL's JDBC driver against the lake's PostgreSQL port, for sqlwire/tests/jdbc.rs:
// a parameterised query (server-prepared once the driver's threshold is passed) and the
// metadata calls BI tools make first. Prints what it read, one item a line.
//
// Usage: java -cp postgresql.jar JdbcQueries.java <url> <user> <password> <decision> <option>

import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.util.Properties;

public class JdbcQueries {
    public static void main(String[] args) throws Exception {
        Properties properties = new Properties();
        properties.setProperty("user", args[1]);
        properties.setProperty("password", args[2]);
        // Server-side prepared from the second run on, so both paths are used.
        properties.setProperty("prepareThreshold", "2");
        try (Connection connection = DriverManager.getConnection(args[0], properties)) {
            String sql = "SELECT log_partition, log_offset, option, component FROM votes "
                + "WHERE decision_id = ? AND option = ? ORDER BY log_partition, log_offset LIMIT 40";
            for (int run = 0; run < 4; run++) {
                try (PreparedStatement statement = connection.prepareStatement(sql)) {
                    statement.setString(1, args[3]);
                    statement.setInt(2, Integer.parseInt(args[4]));
                    try (ResultSet rows = statement.executeQuery()) {
                        while (rows.next()) {
                            System.out.println("row " + run + " " + rows.getInt(1) + "|" + rows.getLong(2)
                                + "|" + rows.getInt(3) + "|" + rows.getString(4));
                        }
                    }
                }
            }
            DatabaseMetaData metadata = connection.getMetaData();
            System.out.println("product " + metadata.getDatabaseProductName() + " "
                + metadata.getDatabaseProductVersion());
            try (ResultSet tables = metadata.getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (tables.next()) {
                    System.out.println("table " + tables.getString("TABLE_NAME"));
                }
            }
            try (ResultSet columns = metadata.getColumns(null, "public", "votes", "%")) {
                while (columns.next()) {
                    System.out.println("column " + columns.getString("COLUMN_NAME") + "|"
                        + columns.getString("TYPE_NAME"));
                }
            }
        }
    }
}
