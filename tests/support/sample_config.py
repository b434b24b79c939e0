"""A realistic OMERO templates.xml DropBox section, shared by the config tests and benches."""

REALISTIC_TEMPLATES = """<?xml version="1.0" encoding="UTF-8"?>
<icegrid>
  <application name="OMERO">
    <variable name="OMEROPY_HOME" value="lib/python/"/>
    <properties id="Basics">
      <property name="Ice.MessageSizeMax" value="65536"/>
      <property name="Ice.CacheMessageBuffers" value="0"/>
    </properties>
    <properties id="PythonServer">
      <property name="Ice.ImplicitContext" value="Shared"/>
      <property name="omero.logging.directory" value="${OMERO_LOGS}"/>
      <property name="omero.logging.level" value="20"/>
    </properties>
    <properties id="DropBox">
      <!-- Per-user values are separated by ';', list items by ','.
           An empty entry means the default, e.g. watchDir=";/OMERODEV/OtherBox". -->
      <property name="omero.fs.host" value="localhost"/>
      <property name="omero.fs.port" value="${ROUTERPORT}"/>
      <property name="omero.fs.maxRetries" value="5"/>
      <property name="omero.fs.retryInterval" value="3"/>
      <property name="omero.fs.defaultDropBoxDir" value="DropBox"/>
      <property name="omero.fs.importUsers" value="default;root"/>
      <property name="omero.fs.watchDir" value=";/OMERODEV/OtherBox"/>
      <property name="omero.fs.eventTypes" value="Creation,Modification;Creation"/>
      <property name="omero.fs.pathMode" value="Follow"/>
      <property name="omero.fs.whitelist" value=""/>
      <property name="omero.fs.blacklist" value=""/>
      <property name="omero.fs.timeout" value="0.0"/>
      <property name="omero.fs.timeToLive" value="0"/>
      <property name="omero.fs.timeToIdle" value="600"/>
      <property name="omero.fs.blockSize" value="0"/>
      <property name="omero.fs.ignoreSysFiles" value="True"/>
      <property name="omero.fs.ignoreDirEvents" value="True"/>
      <property name="omero.fs.dirImportWait" value="60;30"/>
      <property name="omero.fs.fileBatch" value="10"/>
      <property name="omero.fs.throttleImport" value="10"/>
      <property name="omero.fs.readers" value=""/>
      <property name="omero.fs.importArgs" value="--report --email root@example.com"/>
    </properties>
    <server-template id="MonitorServerTemplate">
      <parameter name="index"/>
      <server id="MonitorServer" exe="${PYTHON}" activation="always" pwd="${OMERO_HOME}">
        <option>${OMEROPY_HOME}fsServerMS.py</option>
        <adapter name="omerofs.MonitorServer" endpoints="tcp">
          <object identity="MonitorServer" type="::monitors::MonitorServer"/>
        </adapter>
        <properties>
          <properties refid="Basics"/>
          <property name="omero.fs.monitorServerIdString" value="MonitorServer"/>
          <property name="omero.fs.monitorServerAdapterName" value="omerofs.MonitorServer"/>
        </properties>
      </server>
    </server-template>
    <server-template id="DropBoxTemplate">
      <parameter name="index"/>
      <server id="DropBox" exe="${PYTHON}" activation="always" pwd="${OMERO_HOME}">
        <option>${OMEROPY_HOME}fsDropBox.py</option>
        <adapter name="omerofs.DropBox" endpoints="tcp"/>
        <properties>
          <properties refid="Basics"/>
          <properties refid="PythonServer"/>
          <properties refid="DropBox"/>
          <property name="omero.fs.serverIdString" value="MonitorServerX"/>
          <property name="omero.fs.clientIdString" value="DropBoxX"/>
          <property name="omero.fs.clientAdapterName" value="omerofs.DropBoxX"/>
        </properties>
      </server>
    </server-template>
  </application>
</icegrid>
"""
