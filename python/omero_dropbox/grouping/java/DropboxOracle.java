// omero-dropbox-ng: a long-lived Bio-Formats oracle speaking JSON lines.
//
// Written for this project (not derived from OMERO or Bio-Formats source). It is
// compiled at run time by omero_dropbox.grouping.oracle into a cache directory and run as
//
//     java -cp bioformats_package.jar:<cache> DropboxOracle [--readers FILE]
//
// Protocol: one JSON object per line on stdin, one JSON object per line on stdout,
// in the same order. Requests:
//
//     {"op": "ping"}
//     {"op": "used_files", "path": "/abs/file", "max_files": N}   (N optional; over it:
//                                          ok false, kind "too_many", "count")
//     {"op": "readers"}            every enabled reader: class, format, suffixes
//
// Replies always carry "ok": true|false; failures carry "error" and "kind"
// ("unknown_format", "missing_library", "error"). Output is pure ASCII (non-ASCII is
// \\u-escaped), so the locale of the JVM does not matter for the protocol. Anything
// Bio-Formats prints goes to stderr: stdout is reserved for replies.

import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import loci.common.DebugTools;
import loci.formats.ClassList;
import loci.formats.FileInfo;
import loci.formats.FormatTools;
import loci.formats.IFormatReader;
import loci.formats.ImageReader;
import loci.formats.MissingLibraryException;
import loci.formats.UnknownFormatException;
import loci.formats.in.DefaultMetadataOptions;
import loci.formats.in.MetadataLevel;

public final class DropboxOracle {

  private final ImageReader reader;

  private DropboxOracle(ImageReader reader) {
    this.reader = reader;
  }

  // ---------------------------------------------------------------- set-up

  @SuppressWarnings("unchecked")
  static ClassList<IFormatReader> readerClasses(String readersFile) throws IOException {
    ClassList<IFormatReader> defaults = ImageReader.getDefaultReaderClasses();
    ClassList<IFormatReader> classes;
    if (readersFile == null) {
      classes = defaults;
    } else {
      classes = new ClassList<IFormatReader>(IFormatReader.class);
      for (String line : Files.readAllLines(new File(readersFile).toPath(), StandardCharsets.UTF_8)) {
        int hash = line.indexOf('#');
        String name = (hash >= 0 ? line.substring(0, hash) : line).trim();
        int bracket = name.indexOf('[');
        if (bracket >= 0) {
          name = name.substring(0, bracket).trim();
        }
        if (name.isEmpty()) {
          continue;
        }
        // A short name (TiffReader) is a class of loci.formats.in, as omero-dropbox reads it.
        String full = name.indexOf('.') < 0 ? "loci.formats.in." + name : name;
        try {
          Class<?> c = Class.forName(full);
          if (IFormatReader.class.isAssignableFrom(c)) {
            classes.addClass((Class<? extends IFormatReader>) c);
          }
        } catch (ClassNotFoundException | LinkageError e) {
          System.err.println("DropboxOracle: unknown reader class " + name);
        }
      }
    }
    // The OMERO importer never uses the ZIP reader.
    classes.removeClass(loci.formats.in.ZipReader.class);
    return classes;
  }

  static ImageReader newReader(ClassList<IFormatReader> classes) {
    ImageReader r = new ImageReader(classes);
    r.setGroupFiles(true);
    r.setMetadataFiltered(true);
    r.setFlattenedResolutions(false);
    r.setMetadataOptions(new DefaultMetadataOptions(MetadataLevel.MINIMUM));
    return r;
  }

  // ---------------------------------------------------------------- operations

  private Map<String, Object> usedFiles(String path, long maxFiles) throws Exception {
    Map<String, Object> out = new LinkedHashMap<String, Object>();
    try {
      reader.close();
      reader.setMetadataOptions(new DefaultMetadataOptions(MetadataLevel.MINIMUM));
      reader.setId(path);
      IFormatReader actual = reader.getReader();
      FileInfo[] infos = reader.getAdvancedUsedFiles(false);
      if (maxFiles > 0 && infos.length > maxFiles) {
        // Bounded reply: a count, not a list the caller would refuse anyway.
        out = failure("too_many", "uses " + infos.length + " files, over the limit of " + maxFiles);
        out.put("count", infos.length);
        return out;
      }
      // Files that can initialise the fileset first, as the OMERO importer orders them.
      List<String> ordered = new ArrayList<String>();
      for (FileInfo info : infos) {
        if (info.usedToInitialize) {
          ordered.add(info.filename);
        }
      }
      for (FileInfo info : infos) {
        if (!info.usedToInitialize) {
          ordered.add(info.filename);
        }
      }
      out.put("ok", Boolean.TRUE);
      out.put("format", reader.getFormat());
      out.put("reader", actual.getClass().getName());
      out.put("current", actual.getCurrentFile());
      out.put("files", ordered);
      out.put("spw", Arrays.asList(actual.getDomains()).contains(FormatTools.HCS_DOMAIN));
      out.put("series", reader.getSeriesCount());
    } finally {
      reader.close();
    }
    return out;
  }

  private Map<String, Object> readers() {
    List<Object> list = new ArrayList<Object>();
    for (IFormatReader r : reader.getReaders()) {
      Map<String, Object> one = new LinkedHashMap<String, Object>();
      one.put("class", r.getClass().getName());
      one.put("format", r.getFormat());
      one.put("suffixes", Arrays.asList(r.getSuffixes()));
      one.put("single_file", singleFile(r));
      list.add(one);
    }
    Map<String, Object> out = new LinkedHashMap<String, Object>();
    out.put("ok", Boolean.TRUE);
    out.put("readers", list);
    return out;
  }

  private static Object singleFile(IFormatReader r) {
    // isSingleFile(id) is per file; ask with a dummy name of the reader's first suffix.
    String[] suffixes = r.getSuffixes();
    if (suffixes.length == 0) {
      return null;
    }
    try {
      return r.isSingleFile("x." + suffixes[0]);
    } catch (Exception e) {
      return null;
    }
  }

  Map<String, Object> handle(Map<String, Object> req) {
    Object op = req.get("op");
    try {
      if ("ping".equals(op)) {
        Map<String, Object> out = new LinkedHashMap<String, Object>();
        out.put("ok", Boolean.TRUE);
        out.put("version", FormatTools.VERSION);
        return out;
      }
      if ("used_files".equals(op)) {
        Object max = req.get("max_files");
        return usedFiles((String) req.get("path"), max instanceof Number ? ((Number) max).longValue() : 0L);
      }
      if ("readers".equals(op)) {
        return readers();
      }
      return failure("error", "unknown op " + op);
    } catch (UnknownFormatException e) {
      return failure("unknown_format", String.valueOf(e.getMessage()));
    } catch (MissingLibraryException e) {
      return failure("missing_library", String.valueOf(e.getMessage()));
    } catch (Throwable t) {
      return failure("error", t.getClass().getName() + ": " + t.getMessage());
    }
  }

  private static Map<String, Object> failure(String kind, String message) {
    Map<String, Object> out = new LinkedHashMap<String, Object>();
    out.put("ok", Boolean.FALSE);
    out.put("kind", kind);
    out.put("error", message);
    return out;
  }

  // ---------------------------------------------------------------- main loop

  public static void main(String[] args) throws Exception {
    PrintStream protocol = new PrintStream(
        new java.io.FileOutputStream(java.io.FileDescriptor.out), false, "US-ASCII");
    System.setOut(System.err); // Bio-Formats chatter must not corrupt the protocol
    DebugTools.setRootLevel("ERROR");

    String readersFile = null;
    for (int i = 0; i < args.length; i++) {
      if ("--readers".equals(args[i]) && i + 1 < args.length) {
        readersFile = args[++i];
      }
    }
    DropboxOracle oracle = new DropboxOracle(newReader(readerClasses(readersFile)));

    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    String line;
    while ((line = in.readLine()) != null) {
      if (line.trim().isEmpty()) {
        continue;
      }
      Map<String, Object> reply;
      Object id = null;
      try {
        Object parsed = new Json(line).parse();
        if (!(parsed instanceof Map)) {
          throw new IllegalArgumentException("request is not an object");
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> req = (Map<String, Object>) parsed;
        id = req.get("id");
        reply = oracle.handle(req);
      } catch (RuntimeException e) {
        reply = failure("error", "bad request: " + e.getMessage());
      }
      if (id != null) {
        reply.put("id", id);
      }
      StringBuilder sb = new StringBuilder();
      Json.write(sb, reply);
      protocol.print(sb.append('\n'));
      protocol.flush();
    }
  }

  // ---------------------------------------------------------------- tiny JSON

  /** Minimal JSON reader/writer: objects, arrays, strings, numbers, booleans, null. */
  static final class Json {
    private final String s;
    private int i;

    Json(String s) {
      this.s = s;
    }

    Object parse() {
      Object v = value();
      ws();
      if (i != s.length()) {
        throw new IllegalArgumentException("trailing data at " + i);
      }
      return v;
    }

    private void ws() {
      while (i < s.length() && Character.isWhitespace(s.charAt(i))) {
        i++;
      }
    }

    private Object value() {
      ws();
      if (i >= s.length()) {
        throw new IllegalArgumentException("unexpected end");
      }
      char c = s.charAt(i);
      if (c == '{') {
        Map<String, Object> m = new LinkedHashMap<String, Object>();
        i++;
        ws();
        if (s.charAt(i) == '}') {
          i++;
          return m;
        }
        while (true) {
          ws();
          String k = string();
          ws();
          expect(':');
          m.put(k, value());
          ws();
          if (s.charAt(i) == ',') {
            i++;
            continue;
          }
          expect('}');
          return m;
        }
      }
      if (c == '[') {
        List<Object> l = new ArrayList<Object>();
        i++;
        ws();
        if (s.charAt(i) == ']') {
          i++;
          return l;
        }
        while (true) {
          l.add(value());
          ws();
          if (s.charAt(i) == ',') {
            i++;
            continue;
          }
          expect(']');
          return l;
        }
      }
      if (c == '"') {
        return string();
      }
      if (s.startsWith("true", i)) {
        i += 4;
        return Boolean.TRUE;
      }
      if (s.startsWith("false", i)) {
        i += 5;
        return Boolean.FALSE;
      }
      if (s.startsWith("null", i)) {
        i += 4;
        return null;
      }
      int start = i;
      while (i < s.length() && "+-0123456789.eE".indexOf(s.charAt(i)) >= 0) {
        i++;
      }
      if (start == i) {
        throw new IllegalArgumentException("unexpected character at " + i);
      }
      String num = s.substring(start, i);
      if (num.contains(".") || num.contains("e") || num.contains("E")) {
        return Double.valueOf(num);
      }
      return Long.valueOf(num);
    }

    private void expect(char c) {
      if (i >= s.length() || s.charAt(i) != c) {
        throw new IllegalArgumentException("expected '" + c + "' at " + i);
      }
      i++;
    }

    private String string() {
      expect('"');
      StringBuilder sb = new StringBuilder();
      while (true) {
        char c = s.charAt(i++);
        if (c == '"') {
          return sb.toString();
        }
        if (c != '\\') {
          sb.append(c);
          continue;
        }
        char e = s.charAt(i++);
        switch (e) {
          case 'n': sb.append('\n'); break;
          case 't': sb.append('\t'); break;
          case 'r': sb.append('\r'); break;
          case 'b': sb.append('\b'); break;
          case 'f': sb.append('\f'); break;
          case 'u':
            sb.append((char) Integer.parseInt(s.substring(i, i + 4), 16));
            i += 4;
            break;
          default: sb.append(e);
        }
      }
    }

    static void write(StringBuilder sb, Object v) {
      if (v == null) {
        sb.append("null");
      } else if (v instanceof String) {
        quote(sb, (String) v);
      } else if (v instanceof Boolean || v instanceof Number) {
        sb.append(v.toString());
      } else if (v instanceof Map) {
        sb.append('{');
        boolean first = true;
        for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
          if (!first) {
            sb.append(',');
          }
          first = false;
          quote(sb, String.valueOf(e.getKey()));
          sb.append(':');
          write(sb, e.getValue());
        }
        sb.append('}');
      } else if (v instanceof List) {
        sb.append('[');
        boolean first = true;
        for (Object o : (List<?>) v) {
          if (!first) {
            sb.append(',');
          }
          first = false;
          write(sb, o);
        }
        sb.append(']');
      } else {
        quote(sb, v.toString());
      }
    }

    static void quote(StringBuilder sb, String str) {
      sb.append('"');
      for (int k = 0; k < str.length(); k++) {
        char c = str.charAt(k);
        if (c == '"' || c == '\\') {
          sb.append('\\').append(c);
        } else if (c < 0x20 || c > 0x7e) {
          sb.append(String.format("\\u%04x", (int) c));
        } else {
          sb.append(c);
        }
      }
      sb.append('"');
    }
  }
}
